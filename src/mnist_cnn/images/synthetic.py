"""Images made here, not taken from MNIST: font glyphs, shapes, scribbles and their photographs,
to build test sets from.

The fonts are the ones matplotlib ships (DejaVu, STIX, Computer Modern), so every machine with
mnist-cnn installed has the same ones and a seed gives the same images everywhere.
"""

from __future__ import annotations

import io
import os
from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from scipy import ndimage

# text faces with digits and Latin letters (the symbol-only STIX and cm fonts are left out)
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
              "DejaVuSansMono.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Italic.ttf",
              "DejaVuSerif-Bold.ttf", "STIXGeneral.ttf", "STIXGeneralItalic.ttf",
              "STIXGeneralBol.ttf", "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf")


def font_paths() -> list[Path]:
    """The font files available, in a fixed order."""
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [folder / name for name in FONT_FILES if (folder / name).is_file()]


@cache
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def render_glyph(text: str, font: str | os.PathLike, height: int = 64) -> np.ndarray:
    """`text` in `font`, white ink on black, cropped to the ink (uint8, about `height` rows)."""
    face = _font(str(font), height)
    # whole pixels (Pillow annotates the box as floats, which it is only for a fractional stroke)
    left, top, right, bottom = (int(v) for v in face.getbbox(text))
    canvas = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(canvas).text((2 - left, 2 - top), text, fill=255, font=face)
    return crop_ink(np.asarray(canvas)).copy()


# --------------------------------------------------------------------------------------------
# Photographs, digits and non-digits, to measure and calibrate "not a digit" (novelty.py).
# Every generator takes a numpy Generator: the same seed gives the same images.

# letters that look like no digit (not O, o, l, I, S, s, Z, z, B, g, q, b, G, J, ...)
NOT_DIGIT_LETTERS = "AEFHKMNPRTUVWXYaefhkmnrtwx"


def photograph(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """White-on-black ink (any size) -> a gray photo of it: dark ink on light, unevenly lit
    paper, scaled up, slightly rotated, blurred, noisy, and through a JPEG round trip."""
    height = int(rng.integers(60, 160))
    scale = height / max(ink.shape)
    image = Image.fromarray(ink).resize((max(1, round(ink.shape[1] * scale)),
                                         max(1, round(ink.shape[0] * scale))),
                                        Image.Resampling.BILINEAR)
    image = image.rotate(float(rng.uniform(-12, 12)), Image.Resampling.BILINEAR, expand=True)
    margin = int(rng.integers(height // 4, height // 2 + 2))
    canvas = Image.new("L", (image.width + 2 * margin, image.height + 2 * margin), 0)
    canvas.paste(image, (margin + int(rng.integers(-margin // 3, margin // 3 + 1)),
                         margin + int(rng.integers(-margin // 3, margin // 3 + 1))))
    strength = np.asarray(canvas, dtype=np.float32) / 255.0
    rows, cols = np.mgrid[0:canvas.height, 0:canvas.width].astype(np.float32)
    # paper lit from one side: a linear gradient of brightness across the photo
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * cols / canvas.width + np.sin(angle) * rows / canvas.height
    paper = rng.uniform(180, 245) + rng.uniform(0, 30) * (ramp - ramp.mean())
    ink_level = rng.uniform(10, 60)
    photo = paper * (1 - strength) + ink_level * strength
    photo = ndimage.gaussian_filter(photo, rng.uniform(0.3, 1.5))
    photo += rng.normal(0, rng.uniform(1, 8), photo.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(
        buffer, format="JPEG", quality=int(rng.integers(50, 95)))
    return np.asarray(Image.open(buffer).convert("L"))


def handwritten(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A glyph made to look less typeset: sheared, squeezed, its strokes thickened."""
    image = Image.fromarray(np.pad(ink, 8))
    shear, squeeze = rng.uniform(-0.3, 0.3), rng.uniform(0.75, 1.25)
    image = image.transform(image.size, Image.Transform.AFFINE,
                            (squeeze, shear, -shear * image.height / 2, 0, 1, 0),
                            Image.Resampling.BILINEAR)
    size = int(rng.choice([1, 3, 5]))  # stroke width: as is, or thicker (thinner breaks serifs)
    if size > 1:
        image = image.filter(ImageFilter.MaxFilter(size))
    return np.asarray(image)


def written_glyph(text: str, font: str | os.PathLike, rng: np.random.Generator,
                  height: int = 96) -> np.ndarray:
    """`text` in `font` about `height` rows tall, made to look written (handwritten)."""
    return handwritten(render_glyph(text, font, height), rng)


def letter(char: str, font: str | os.PathLike, rng: np.random.Generator) -> np.ndarray:
    return written_glyph(char, font, rng, 64)


def _jitter(points: np.ndarray, rng: np.random.Generator, amount: float = 3.0) -> list[tuple]:
    return [tuple(p) for p in points + rng.normal(0, amount, points.shape)]


def _curve(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack([x, y], 1)


_T_HEART, _T_SPIRAL = np.linspace(0, 2 * np.pi, 40), np.linspace(0, 5 * np.pi, 60)
_STAR = np.pi / 2 + np.arange(6) * 4 * np.pi / 5
# each shape's strokes, in a unit box (x right, y down)
SHAPE_STROKES: dict[str, list] = {
    "triangle": [[(0.5, 0), (1, 1), (0, 1), (0.5, 0)]],
    "square": [[(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)]],
    "star": [_curve(0.5 + 0.5 * np.cos(_STAR), 0.5 - 0.5 * np.sin(_STAR))],
    "cross": [[(0, 0), (1, 1)], [(1, 0), (0, 1)]],
    "plus": [[(0.5, 0), (0.5, 1)], [(0, 0.5), (1, 0.5)]],
    "arrow": [[(0, 0.5), (1, 0.5)], [(0.65, 0.2), (1, 0.5), (0.65, 0.8)]],
    "heart": [_curve(0.5 + 16 * np.sin(_T_HEART) ** 3 / 34,
                     0.45 - (13 * np.cos(_T_HEART) - 5 * np.cos(2 * _T_HEART)
                             - 2 * np.cos(3 * _T_HEART)) / 34)],
    "grid": [line for f in (0.0, 0.5, 1.0) for line in ([(f, 0), (f, 1)], [(0, f), (1, f)])],
    "zigzag": [[(i / 5, i % 2) for i in range(6)]],
    "house": [[(0, 1), (0, 0.4), (0.5, 0), (1, 0.4), (1, 1), (0, 1), (1, 0.4), (0, 0.4), (1, 1)]],
    "spiral": [_curve(0.5 + _T_SPIRAL * np.cos(_T_SPIRAL) / 34,
                      0.5 + _T_SPIRAL * np.sin(_T_SPIRAL) / 34)],
    "check": [[(0, 0.6), (0.35, 1), (1, 0)]],
}
SHAPES = tuple(SHAPE_STROKES)


def shape(kind: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A shape drawn by hand, white on black (`kind` one of SHAPES)."""
    if kind not in SHAPE_STROKES:
        raise ValueError(f"unknown shape {kind!r}")
    canvas = Image.new("L", (size + 16, size + 16), 0)
    draw = ImageDraw.Draw(canvas)
    width = int(rng.integers(3, 8))
    for points in SHAPE_STROKES[kind]:
        draw.line(_jitter(np.asarray(points, dtype=float) * size + 8, rng), fill=255,
                  width=width, joint="curve")
    return np.asarray(canvas)


def scribble(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Random smooth strokes, white on black: a pen wandering with a drifting heading."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 4))):
        steps = int(rng.integers(30, 90))
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.35, steps))
        path = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], 1) * size / 25, 0)
        path = path - path.min(0)
        path = path / max(path.max(), 1e-6) * (size - 8) + 4
        draw.line([tuple(p) for p in path], fill=255, width=int(rng.integers(2, 6)),
                  joint="curve")
    return np.asarray(canvas)


def silhouette(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A filled, textured outline, white on black: what a photographed object (a shoe, a bag, a
    shirt) becomes after the MNIST preprocessing. Never thin (it could pass for a 1) and never
    with a hole (a 0)."""
    count = int(rng.integers(5, 12))
    angles = np.sort(rng.uniform(0, 2 * np.pi, count))
    radii = rng.uniform(0.45, 1.0, count)
    aspect = rng.uniform(0.6, 1.6)  # width over height
    points = np.stack([aspect * radii * np.cos(angles), radii * np.sin(angles)], 1)
    points = points / np.abs(points).max() * (size / 2 - 2) + size / 2
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=255)
    ink = np.asarray(canvas, dtype=np.float32)
    rows, cols = np.mgrid[0:size, 0:size]
    period = rng.uniform(3, 10)
    texture = [np.ones((size, size)), 0.5 + 0.5 * (rows // period % 2),
               0.5 + 0.5 * ((rows + cols) // period % 2), rng.uniform(0.4, 1.0, (size, size))]
    ink *= texture[int(rng.integers(len(texture)))] * rng.uniform(0.5, 1.0)
    return ink.astype(np.uint8)


def outlier_pool(count: int, seed: int) -> np.ndarray:
    """Non-digits for outlier exposure, as predict sees them: (count, 28, 28) uint8 photos of
    letters (the last third of the fonts: the others are kept for calibration and the report),
    shapes, scribbles and textured silhouettes, preprocessed."""
    from .notebook import jpeg_bytes, photograph_page, training_condition
    from .preprocess import ImageError, load_and_preprocess, preprocess  # not needed to draw

    rng = np.random.default_rng(seed)
    fonts = font_paths()[2::3]
    pool: list[np.ndarray] = []
    while len(pool) < count:
        # letters half the time (the non-digits people write most), mostly on notebook pages
        kind = 0 if rng.random() < 0.5 else rng.integers(1, 4)
        if kind == 0:
            ink = letter(str(rng.choice(list(NOT_DIGIT_LETTERS))), fonts[rng.integers(len(fonts))],
                         rng)
        elif kind == 1:
            ink = shape(str(rng.choice(SHAPES)), rng)
        elif kind == 2:
            ink = scribble(rng)
        else:
            ink = silhouette(rng)
        try:
            # on plain paper, or on a notebook page (ruled, squared, ...)
            if rng.random() < (1 / 3 if kind == 0 else 0.5):
                pool.append(preprocess(photograph(ink, rng)).final)
            else:
                pool.append(load_and_preprocess(jpeg_bytes(photograph_page(
                    ink, rng, training_condition(rng)))).final)
        except ImageError:
            continue
    return np.stack(pool)
# Rows of digits (numbers), to test reading whole numbers


def crop_ink(image: np.ndarray) -> np.ndarray:
    """A white-on-black image cropped to its ink."""
    from .preprocess import ink_box  # imaging is not needed to draw

    box = ink_box(image)
    return image if box is None else image[box]


def compose_row(glyphs: list[np.ndarray], rng: np.random.Generator, height: int = 48,
                touching: float = 0.2) -> tuple[np.ndarray, list[list[int]]]:
    """Glyphs (white on black, any size) side by side as one number: dark ink on light paper.

    Each glyph is scaled to about `height` rows (+-12%), its baseline wobbles (+-8% of the
    height), and the gaps are random: with probability `touching` a pair touches or overlaps by up
    to 12% of the height, otherwise 5% to 60% of the height lies between them. Returns the uint8
    image and each glyph's box [left, top, right, bottom] (right and bottom exclusive).
    """
    layers, boxes = compose_layers(glyphs, rng, height, touching)
    return (255 - layers.max(axis=0)).astype(np.uint8), boxes


def compose_layers(glyphs: list[np.ndarray], rng: np.random.Generator, height: int = 48,
                   touching: float = 0.2, overlap: tuple[float, float] = (-0.12, 0.0)
                   ) -> tuple[np.ndarray, list[list[int]]]:
    """compose_row's glyphs each on a canvas of its own (white on black, N x H x W, one per
    glyph), so that whose ink a pixel is stays known where glyphs touch; `overlap`: the range
    of a touching pair's gap, as a share of the height (negative: overlapping)."""
    scaled = []
    for glyph in glyphs:
        glyph = crop_ink(glyph)
        h = max(4, round(height * rng.uniform(0.88, 1.12)))
        w = max(1, round(glyph.shape[1] * h / glyph.shape[0]))
        scaled.append(np.asarray(Image.fromarray(glyph).resize((w, h), Image.Resampling.BICUBIC)))
    margin = height // 2
    shifts = rng.uniform(-0.08, 0.08, len(glyphs)) * height
    gaps = np.where(rng.random(len(glyphs)) < touching, rng.uniform(*overlap, len(glyphs)),
                    rng.uniform(0.05, 0.6, len(glyphs))) * height
    width = sum(g.shape[1] for g in scaled) + int(np.clip(gaps, 0, None).sum()) + 2 * margin
    layers = np.zeros((len(glyphs), round(1.4 * height) + 2 * margin, width), dtype=np.uint8)
    boxes, x = [], margin
    for layer, glyph, shift, gap in zip(layers, scaled, shifts, gaps):
        h, w = glyph.shape
        # glyphs stand on a common baseline, as written digits do
        bottom = margin + round(1.2 * height + shift)
        top = bottom - h
        layer[top:bottom, x:x + w] = glyph
        boxes.append([x, top, x + w, bottom])
        x += w + round(gap)
    return layers[:, :, :max(b[2] for b in boxes) + margin], boxes


def mnist_row(images: np.ndarray, labels: np.ndarray, length: int, rng: np.random.Generator,
              **options) -> tuple[np.ndarray, str]:
    """A row of `length` random MNIST digits from `images` (N x 28 x 28) and its digit string."""
    picks = rng.integers(0, len(images), length)
    row, _ = compose_row([images[i] for i in picks], rng, **options)
    return row, "".join(str(int(labels[i])) for i in picks)


def font_row(length: int, rng: np.random.Generator, **options) -> tuple[np.ndarray, str]:
    """A row of `length` random digits, each in a random font (font_paths())."""
    fonts = font_paths()
    text = "".join(str(d) for d in rng.integers(0, 10, length))
    glyphs = [render_glyph(t, fonts[rng.integers(len(fonts))]) for t in text]
    row, _ = compose_row(glyphs, rng, **options)
    return row, text
