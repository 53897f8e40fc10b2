"""Phone photos of handwriting on notebook paper, simulated: to train the shipped network for what
preprocessing makes of real photos, and to build the report sets of benchmarks/photos.py.

`photograph_page(ink, rng, **condition)` takes a digit (or a letter, or a row of digits) as
white-on-black ink and returns an RGB photo of it written on a page: plain, ruled or squared
paper; ballpoint in black, blue, red or green, pencil, or a marker; strokes from hairline to
marker; the page tilted and slightly in perspective; lit from one side, a shadow's edge across
it, a dark desk beside the page; blur, sensor noise and a JPEG round trip; from a 20-pixel
thumbnail to a 12-megapixel photo. Each condition can be forced (the report's columns) or left
to chance (training). The same seed gives the same photo everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ..opencv import cv2
from .preprocess import set_stroke_width

PAPERS = ("plain", "ruled", "squared")
DESK_TRIES = 8  # page edges drawn at most, for one that keeps off the writing...
DESK_GAP = 0.02  # ... by this share of the page's height
PENS = ("black", "blue", "red", "green", "pencil", "marker")
# ink colours in RGB: what ballpoints and a graphite pencil leave on white paper
PEN_RGB = {"black": (35, 35, 45), "blue": (30, 50, 150), "red": (170, 30, 40),
           "green": (30, 110, 60), "pencil": (95, 95, 100), "marker": (25, 25, 30)}
LINE_RGB = ((150, 180, 225), (170, 190, 215), (175, 175, 180), (215, 150, 160))  # blue, grey, red


@dataclass
class Condition:
    """What a photo shows; None means drawn at random."""

    paper: str | None = None  # one of PAPERS
    pen: str | None = None  # one of PENS
    stroke: float | None = None  # stroke width as a share of the digit's height (MNIST's: ~0.12)
    shadow: bool | None = None  # a shadow's edge across the page
    desk: bool | None = None  # a dark desk beside the page, in a corner or along a side
    tilt: float | None = None  # degrees the page is turned
    height: int | None = None  # the photo's height in pixels
    digit_share: float | None = None  # the digit's height as a share of the photo's height
    blur: float | None = None  # the camera's blur as a share of the digit's height (None: about
    # 1-4 px at 300 px, growing with the photo's size)


@dataclass
class Resolved:
    """A Condition with every field decided (`resolve`): what one photo shows."""

    paper: str
    pen: str
    stroke: float
    shadow: bool
    desk: bool
    tilt: float
    height: int
    digit_share: float
    blur: float | None


_T = TypeVar("_T")


def _pick(value: _T | None, draw: Callable[[], _T]) -> _T:
    return draw() if value is None else value


def resolve(condition: Condition, rng: np.random.Generator) -> Resolved:
    """Every field drawn at random where the condition leaves it open."""
    c = condition
    return Resolved(
        paper=_pick(c.paper, lambda: str(rng.choice(PAPERS, p=[0.3, 0.4, 0.3]))),
        pen=_pick(c.pen, lambda: str(rng.choice(PENS, p=[0.25, 0.3, 0.1, 0.05, 0.2, 0.1]))),
        stroke=_pick(c.stroke, lambda: float(np.exp(rng.uniform(np.log(0.03), np.log(0.25))))),
        shadow=_pick(c.shadow, lambda: bool(rng.random() < 0.35)),
        desk=_pick(c.desk, lambda: bool(rng.random() < 0.2)),
        tilt=_pick(c.tilt, lambda: float(rng.normal(0, 4))),
        height=_pick(c.height, lambda: int(np.exp(rng.uniform(np.log(24), np.log(400))))),
        digit_share=_pick(c.digit_share, lambda: float(rng.uniform(0.35, 0.8))),
        blur=c.blur,
    )


def set_stroke(ink: np.ndarray, share: float) -> np.ndarray:
    """White-on-black ink with its strokes redrawn `share` of its height wide."""
    return set_stroke_width(ink, share * ink.shape[0])


def _paper(shape: tuple[int, int], paper: str, spacing: float, rng: np.random.Generator
           ) -> np.ndarray:
    """Float RGB paper (0..1) with its ruling: lines `spacing` pixels apart."""
    height, width = shape
    tone = rng.uniform(0.86, 1.0) * np.array([1.0, rng.uniform(0.97, 1.0), rng.uniform(0.9, 1.0)])
    page = np.ones((height, width, 3), np.float32) * tone.astype(np.float32)
    page += rng.normal(0, 0.012, (height, width, 1)).astype(np.float32)  # the paper's grain
    if paper == "plain":
        return page
    colour = np.array(LINE_RGB[rng.integers(len(LINE_RGB))], np.float32) / 255.0
    thickness = max(1, round(spacing * rng.uniform(0.025, 0.07)))
    lines = np.zeros((height, width), np.uint8)
    offset = rng.uniform(0, spacing)
    for y in np.arange(offset, height, spacing):
        cv2.line(lines, (0, round(y)), (width - 1, round(y)), 255, thickness)
    if paper == "squared":
        for x in np.arange(rng.uniform(0, spacing), width, spacing):
            cv2.line(lines, (round(x), 0), (round(x), height - 1), 255, thickness)
    strength: np.ndarray = cv2.GaussianBlur(lines.astype(np.float32) / 255.0, (0, 0), 0.5)[..., None]
    strength *= rng.uniform(0.5, 1.0)
    return page * (1 - strength) + colour * tone * strength


def _lighting(shape: tuple[int, int], shadow: bool, rng: np.random.Generator) -> np.ndarray:
    """A brightness field: light from one side, a vignette, and maybe a shadow's edge."""
    height, width = shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = cols / width - 0.5, rows / height - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0, 0.35) * (np.cos(angle) * u + np.sin(angle) * v)
    light -= rng.uniform(0, 0.5) * (u ** 2 + v ** 2)
    if shadow:
        # a half-plane darker by 25-60%, its edge sharp or soft, crossing near the middle
        angle = rng.uniform(0, 2 * np.pi)
        side = np.cos(angle) * u + np.sin(angle) * v - rng.uniform(-0.3, 0.3)
        softness = rng.uniform(0.005, 0.08)
        light *= 1.0 - rng.uniform(0.25, 0.6) / (1.0 + np.exp(-side / softness))
    return light.astype(np.float32)


def _desk(shape: tuple[int, int], strength: np.ndarray, rng: np.random.Generator
          ) -> np.ndarray | None:
    """Where the page is (1) and where the desk shows (0): a straight page edge near one side
    or across one corner, never over the writing (which is on the page) nor within DESK_GAP of
    the page's height of it; None when no edge tried in DESK_TRIES keeps off it."""
    height, width = shape
    reach = max(1, round(DESK_GAP * height))
    written = cv2.dilate((strength > 0.05).astype(np.uint8),
                         np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)) > 0
    w, h = width, height
    for _ in range(DESK_TRIES):
        mask = np.ones((height, width), np.float32)
        if rng.random() < 0.5:  # along one side
            depth = rng.uniform(0.05, 0.2)
            side = rng.integers(4)
            corners = {0: [(0, 0), (w * depth * rng.uniform(0.6, 1.4), 0),
                           (w * depth * rng.uniform(0.6, 1.4), h), (0, h)],
                       1: [(w, 0), (w * (1 - depth), 0),
                           (w * (1 - depth * rng.uniform(0.6, 1.4)), h), (w, h)],
                       2: [(0, 0), (w, 0), (w, h * depth), (0, h * depth * rng.uniform(0.6, 1.4))],
                       3: [(0, h), (w, h), (w, h * (1 - depth)), (0, h * (1 - depth))]}[int(side)]
        else:  # across a corner
            a, b = rng.uniform(0.15, 0.45) * w, rng.uniform(0.15, 0.45) * h
            x0, y0 = (0, w)[rng.integers(2)], (0, h)[rng.integers(2)]
            corners = [(x0, y0), (abs(x0 - a), y0), (x0, abs(y0 - b))]
        cv2.fillPoly(mask, [np.round(np.array(corners)).astype(np.int32)], 0.0)
        if mask[written].min(initial=1.0) == 1.0:
            return cv2.GaussianBlur(mask, (0, 0), 0.7)
    return None


def photograph_page(ink: np.ndarray, rng: np.random.Generator,
                    condition: Condition | None = None) -> np.ndarray:
    """White-on-black ink (a digit, a letter or a row of them) -> an RGB uint8 phone photo of it
    written on a notebook page (see the module's docstring and `Condition`)."""
    c = resolve(condition or Condition(), rng)
    # Draw at a working size where strokes are a few pixels wide, then shrink to the photo's size
    ink_height = 96
    glyph = cv2.resize(ink, (max(1, round(ink.shape[1] * ink_height / ink.shape[0])), ink_height),
                       interpolation=cv2.INTER_AREA if ink.shape[0] > ink_height else
                       cv2.INTER_LINEAR)
    glyph = set_stroke(np.pad(glyph, 8), c.stroke * ink_height / (ink_height + 16))
    # the page holds the turned writing with some paper around it: nothing is cut off
    turn = np.radians(abs(c.tilt))
    needed_h = glyph.shape[1] * np.sin(turn) + glyph.shape[0] * np.cos(turn)
    needed_w = glyph.shape[1] * np.cos(turn) + glyph.shape[0] * np.sin(turn)
    page_height = round(max(ink_height / c.digit_share, 1.2 * needed_h))
    aspect = rng.uniform(0.55, 1.4)
    shape = (page_height, round(max(page_height * aspect, 1.15 * needed_w + 8)))
    strength = np.zeros(shape, np.float32)
    slack_y, slack_x = shape[0] - needed_h, shape[1] - needed_w
    centre_y = shape[0] / 2 + rng.uniform(-0.4, 0.4) * slack_y
    centre_x = shape[1] / 2 + rng.uniform(-0.4, 0.4) * slack_x
    top = int(np.clip(round(centre_y - glyph.shape[0] / 2), 0, shape[0] - glyph.shape[0]))
    left = int(np.clip(round(centre_x - glyph.shape[1] / 2), 0, shape[1] - glyph.shape[1]))
    strength[top:top + glyph.shape[0], left:left + glyph.shape[1]] = glyph / 255.0

    spacing = ink_height * rng.uniform(0.45, 1.1)
    page = _paper(shape, c.paper, spacing, rng)
    pen = np.array(PEN_RGB[c.pen], np.float32) / 255.0 + rng.normal(0, 0.03, 3).astype(np.float32)
    if c.pen == "pencil":  # graphite: lighter, grainy, its darkness uneven along the stroke
        grain = rng.uniform(0.4, 1.0, shape).astype(np.float32)
        strength *= cv2.GaussianBlur(grain, (0, 0), 1.0) * rng.uniform(0.6, 1.0)
        pen = pen * rng.uniform(0.8, 1.5)
    else:
        strength *= rng.uniform(0.85, 1.0)
    photo = page * (1 - strength[..., None]) + np.clip(pen, 0, 1) * page * strength[..., None]

    # The page turned and seen slightly from the side, then lit, then the desk around it
    photo, strength = _perspective(photo, strength, c.tilt, rng)
    photo *= _lighting(shape, c.shadow, rng)[..., None]
    page_mask = _desk(shape, strength, rng) if c.desk else None
    if page_mask is not None:
        desk = np.array([rng.uniform(0.05, 0.35)] * 3, np.float32) * rng.uniform(0.7, 1.3, 3)
        photo = photo * page_mask[..., None] + desk.astype(np.float32) * (1 - page_mask[..., None])

    # The camera: the photo's size, blur, noise, JPEG
    out_height = c.height
    out_width = max(1, round(shape[1] * out_height / shape[0]))
    interpolation = cv2.INTER_AREA if out_height < shape[0] else cv2.INTER_CUBIC
    photo = cv2.resize(photo, (out_width, out_height), interpolation=interpolation)
    sigma = rng.uniform(0.3, 1.2) * max(1.0, out_height / 300)
    if c.blur is not None:
        sigma = c.blur * c.digit_share * out_height
    photo = cv2.GaussianBlur(photo, (0, 0), sigma)
    photo += rng.normal(0, rng.uniform(0.003, 0.025), photo.shape).astype(np.float32)
    rgb = np.clip(photo * 255, 0, 255).astype(np.uint8)
    quality = int(rng.integers(45, 95))
    ok, encoded = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    assert decoded is not None  # the JPEG just encoded from an image always decodes
    return decoded[..., ::-1].copy()


def _perspective(photo: np.ndarray, strength: np.ndarray, tilt: float, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The photo turned by `tilt` degrees and its corners moved by up to 4% (a phone held not
    quite square to the page); the paper beyond the page's edge is the page's own colour. The
    ink's strength is moved with it (to keep the desk off the writing)."""
    height, width = photo.shape[:2]
    centre = (width / 2, height / 2)
    turn = cv2.getRotationMatrix2D(centre, tilt, 1.0)
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    turned = cv2.transform(corners[None], turn)[0]
    moved = turned + rng.uniform(-0.04, 0.04, (4, 2)).astype(np.float32) * [width, height]
    matrix = cv2.getPerspectiveTransform(corners, moved.astype(np.float32))
    fill = [float(v) for v in np.median(photo.reshape(-1, 3), axis=0)]
    border = cv2.BORDER_REPLICATE if rng.random() < 0.5 else cv2.BORDER_CONSTANT
    photo = cv2.warpPerspective(photo, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                borderMode=border, borderValue=fill)
    strength = cv2.warpPerspective(strength, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return photo, strength


# --------------------------------------------------------------------------------------------
# Glyphs from each source, white on black, about 96 px tall


def mnist_glyph(image: np.ndarray) -> np.ndarray:
    """A 28x28 MNIST digit -> its ink cropped and enlarged (bicubic) to 96 px tall."""
    from .synthetic import crop_ink

    ink = crop_ink(np.asarray(image, np.uint8))
    scale = 96 / ink.shape[0]
    return cv2.resize(ink, (max(1, round(ink.shape[1] * scale)), 96), interpolation=cv2.INTER_CUBIC)


def row_ink(glyphs: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Glyphs side by side as one number (synthetic.compose_row), white on black, cropped to the
    ink so that a stroke's share of the height means what it means for one digit."""
    from .synthetic import compose_row, crop_ink

    row, _ = compose_row(glyphs, rng, height=96)
    return crop_ink(255 - row)


def jpeg_bytes(rgb: np.ndarray, quality: int = 92) -> bytes:
    """An RGB photo as the JPEG file a phone would send."""
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]),
                               [cv2.IMWRITE_JPEG_QUALITY, quality])
    return encoded.tobytes()


FAR_SHARE = 0.12  # of the training photos, those taken from afar (training_condition)


def training_condition(rng: np.random.Generator) -> Condition:
    """What a training photo shows: anything at random, or (FAR_SHARE of them) a digit as a
    12 MP photo of it from afar shows it once `predict` has shrunk the photo: blurred by 1.5-6% of
    its height (a camera's blur is some pixels of the photo, which are many for a small digit).
    "Not a digit" must refuse letters blurred so too, as round as digits. Drawn at a few hundred
    pixels, as fast as any other photo, not at 12 MP."""
    if rng.random() < FAR_SHARE:
        return Condition(height=int(rng.integers(200, 450)),
                         digit_share=float(rng.uniform(0.15, 0.35)),
                         blur=float(rng.uniform(0.015, 0.06)))
    return Condition()


def photo_fields(images: Sequence[np.ndarray], count: int, seed: int,
                 glyph: Callable[[np.ndarray], np.ndarray] = mnist_glyph
                 ) -> tuple[np.ndarray, np.ndarray]:
    """`count` photos of digits drawn from `images` (by default N x 28 x 28, MNIST's convention;
    `glyph` makes each one's white-on-black ink) on notebook pages, each through the same
    decoding and preprocessing as `mnist-cnn predict`: (the 28x28 fields the network sees, the
    index of the digit each came from). Photos that preprocessing refuses are left out, so a few
    fewer than `count` may come back."""
    from .preprocess import ImageError, load_and_preprocess  # the predictor's own path

    rng = np.random.default_rng(seed)
    fields, sources = [], []
    for index in rng.integers(0, len(images), count):
        photo = photograph_page(glyph(images[index]), rng, training_condition(rng))
        try:
            fields.append(load_and_preprocess(jpeg_bytes(photo, int(rng.integers(70, 95)))).final)
        except ImageError:
            continue
        sources.append(int(index))
    return np.stack(fields), np.array(sources)
