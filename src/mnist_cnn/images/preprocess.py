"""Any picture of a digit -> a 28x28 image in the MNIST convention.

MNIST digits are white ink on black (uint8, background 0, ink up to 255). The ink's bounding box
is scaled, aspect ratio kept, so that its longer side is 20 px, anti-aliased, and pasted into a
28x28 field so that the ink's centre of mass sits at the field's centre.

Coordinates: pixel centres are at integer indices, so a 28-px row spans -0.5..27.5. Measured this
way, the MNIST test digits have their centre of mass at (14, 14) (mean 13.99 / 14.00, every digit
within 13.5..14.5): LeCun shifted by whole pixels towards 28 / 2 = 14, which is half a pixel past
the geometric centre 13.5. We copy what the data does, so `MNIST_CENTRE = 14.0` and the shift is
rounded to whole pixels, which keeps MNIST digits unchanged when they go through `preprocess`.

Steps: load (any format, mode, orientation) -> grayscale -> polarity (a light background is
inverted) -> background suppression (Otsu threshold, soft strokes kept) -> specks removed ->
crop to the ink -> resize (longer side 20) -> paste by centre of mass.
"""

from __future__ import annotations

import errno
import io
import math
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import MnistCnnError
from ..opencv import cv2

MAX_PIXELS: int = 40_000_000
# larger images are shrunk to this before preprocessing (plenty for a digit a few percent of a
# 12-megapixel photo), by `predict` and the server alike, so that both give the same answer
WORK_PIXELS: int = 400_000
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")  # Pillow's names; others are refused

FIELD = 28  # MNIST image side
BOX = 20  # longer side of the ink's bounding box
MNIST_CENTRE = 14.0  # where MNIST puts the centre of mass (see the module docstring)
MIN_CONTRAST = 24  # ink must differ from the background by at least this many gray levels
NOISE_FACTOR = 8  # ... and by this many times the background's noise,
VISIBLE = 40  # ... or by this many, which anyone sees: such ink is always read
EDGE_RADIUS = 2  # soft edge pixels kept around the solid strokes
FAINT = 0.5  # a stroke's pixels this share as dark as its darkest are ink
LIGHTER = 0.35  # a digit-sized blob this share as dark as the darkest ink is ink, though lighter
DIGIT_SIZED = 0.5  # ... when it is this share of the tallest ink's height or more,
WIDE_DIGIT = 1.5  # ... and no wider than this many times it
SPECK_SHARE = 0.05  # a separate blob with less ink than this share of the largest one is a speck
NEAR = 0.6  # blobs this share of the digit's size away from it still belong to it
DARK_PAGE = 48  # a picture whose median is darker than this is a dark page
TAIL = 1.5  # a tail of gray levels this many times longer than the other is the ink's
ROW_SHAPE = 1.5  # a picture this many times wider than high is taken for a row of digits
MEDIAN_LIGHTING = 0.25  # ... else also by a median this share of the lighting's scale across
ANALYSIS_SIDE = 512  # the paper's level is estimated at most this many pixels across
PAPER_WINDOW = 0.3  # ... with a window this share of the image's shorter side: wider than any
# stroke, and no wider (in a long row of digits the paper still changes from top to bottom,
# which a window as long as the row would not follow)
LINE_SPAN = 0.8  # a straight line this long, as a share of the image's side, is a ruling
LINE_SLOPE = 0.36  # tan(20 degrees): a page photographed turned by up to that
LINE_MARGIN = 0.15  # ink on a ruling is at least this much darker than the ruling
SQUEEZE = 8  # rulings are sought in their pixels squeezed along them up to this many times ...
SQUEEZED_REACH = 32  # ... as long as a ruling stays this many pixels long
BORDER_RUN = 0.2  # a filled blob touching this share of the border is a page's or desk's edge
FILLED = 0.4  # ... when it fills this share of its box (a stroke fills far less)
CONVEX = 0.85  # ... and this share of its convex hull
ALONG = 0.6  # ... or touches the border along this share of its own longer side
THIN_SHARE = 0.03  # ... judged also without lines and strokes thinner than this share of the side
# MNIST's strokes are 1.9 to 5.0 px wide in the 28x28 field (2nd and 98th percentiles of its
# training digits, measured as stroke_width does); a little beyond that, strokes are redrawn
THINNEST, THICKEST = 1.7, 5.6
# The ink's longer side must span this many pixels, and this share of the image's shorter side
# (MNIST's digits span 20 of 28; a "1" drawn in a corner of the server's canvas, about a tenth)
MIN_INK_SIDE = 4
MIN_INK_SHARE = 0.04


class ImageError(MnistCnnError):
    """An image that cannot be read or holds no digit; the message names the file."""


class TooManyPixels(ImageError):
    """An image larger than the decoding limit (the server counts these refusals apart)."""


@dataclass
class Preprocessed:
    gray: np.ndarray  # uint8 HxW: the image as loaded, in grayscale
    inverted: bool  # True when a light background was found and the image inverted
    ink: np.ndarray  # uint8 HxW: white ink on black, background suppressed
    cropped: np.ndarray  # uint8: `ink` cropped to the ink's bounding box
    scaled: np.ndarray  # uint8: `cropped` resized so that its longer side is 20 px
    final: np.ndarray  # uint8 28x28: the MNIST convention
    threshold: float  # Otsu threshold on the (possibly inverted) gray levels: ink is > threshold


@dataclass
class Ink:
    """What extract_ink finds in a picture."""
    ink: np.ndarray  # uint8 HxW: white ink on black, paper suppressed
    solid: np.ndarray  # bool HxW: the pixels that are ink
    inverted: bool  # True when dark ink on light paper was found (and the picture inverted)
    threshold: float  # Otsu threshold on the picture's gray levels
    ruling_angle: float | None  # the page's ruled lines' slope in degrees (positive: falling
    # to the right), None where no ruling was found


# --------------------------------------------------------------------------------------------
# Loading


def source_name(source: str | os.PathLike | bytes) -> str:
    """How messages name an image: its path, or "<bytes>"."""
    return "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)


def load_image(source: str | os.PathLike | bytes, max_pixels: int = MAX_PIXELS,
               name: str | None = None, work_pixels: int | None = WORK_PIXELS) -> Image.Image:
    """Read a path or raw bytes as an upright 8-bit grayscale ("L") image; errors start with
    `name` (default: the path, or "<bytes>").

    At most `max_pixels` are decoded. With `work_pixels` (None: never), a larger image is shrunk
    to at most that many pixels (box average by a whole factor); a JPEG is then decoded at 1/2,
    1/4 or 1/8 size directly (libjpeg's DCT scaling), so it may have more than `max_pixels` to
    begin with.
    """
    name = name or source_name(source)
    fp = _readable(source, name)
    too_many = f"{name}: too many pixels (the limit is {max_pixels:,}); shrink it first"
    with warnings.catch_warnings():
        # Pillow only warns about huge images up to twice its own limit: make that an error too
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image: Image.Image = Image.open(fp, formats=FORMATS)  # lazy: reads the header only
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise TooManyPixels(too_many) from None  # our limit, not Pillow's, is the one to quote
        except Image.UnidentifiedImageError:
            raise ImageError(
                f"{name}: not an image (or not one of {', '.join(FORMATS)})") from None
        except Exception as e:  # Pillow's parsers raise many exception types on corrupt headers
            raise ImageError(f"{name}: cannot read the image ({e})") from None
        with image:
            _limit_decoded_size(image, name, max_pixels, work_pixels)
            try:
                image.load()  # decode everything now, so that a truncated file fails here
                if work_pixels:
                    image = _shrink(image, work_pixels)
                return _to_gray(ImageOps.exif_transpose(image))  # a new image: safe to close
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise TooManyPixels(too_many) from None
            except Exception as e:  # truncated or corrupt: OSError, SyntaxError, ValueError, ...
                raise ImageError(f"{name}: truncated or corrupt image ({e})") from None


def _readable(source: str | os.PathLike | bytes, name: str) -> io.BytesIO | Path:
    """Raw bytes as a file, or a path checked to be a non-empty regular file."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError(f"{name}: empty (0 bytes)")
        return io.BytesIO(source)
    path = Path(source)
    try:
        info = path.stat()
    except OSError as e:
        raise ImageError(f"{name}: {path_problem(path, e)}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{name}: not a file")
    if info.st_size == 0:
        raise ImageError(f"{name}: empty file (0 bytes)")
    return path


def _limit_decoded_size(image: Image.Image, name: str, max_pixels: int,
                        work_pixels: int | None) -> None:
    """Ask a large JPEG to decode at a reduced size, then refuse what is still over the limit."""
    width, height = image.size
    if work_pixels and width * height > work_pixels and image.format == "JPEG":
        scale = math.sqrt(work_pixels / (width * height))
        image.draft("L", (math.ceil(width * scale), math.ceil(height * scale)))
        width, height = image.size  # what will be decoded
    if width * height > max_pixels:
        raise TooManyPixels(f"{name}: too many pixels ({width}x{height}; the limit is "
                            f"{max_pixels:,}); shrink it first")


def shrink_factor(source: str | os.PathLike | bytes, loaded: Image.Image) -> float:
    """How many of the original's pixels one pixel of `loaded` (from load_image) spans: boxes
    found in the shrunk image are multiplied by it to be in the original's pixels."""
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    with Image.open(fp, formats=FORMATS) as original:  # the header alone gives the size
        return max(original.size) / max(loaded.size)


def path_problem(path: Path, error: OSError) -> str:
    """Why `path` cannot be opened, in words: broken and looping links named as such."""
    if error.errno == errno.ENOENT and path.is_symlink():
        return f"broken symbolic link (to {os.readlink(path)}, which does not exist)"
    if error.errno == errno.ENOENT:
        return "file not found"
    if error.errno == errno.ELOOP:
        return "symbolic link loop"
    return (error.strerror or str(error)).lower()


def _shrink(image: Image.Image, work_pixels: int) -> Image.Image:
    """Box-average by the smallest whole factor that leaves at most `work_pixels`, before the
    conversions to gray: those copy the image several times over."""
    factor = math.ceil(math.sqrt(image.width * image.height / work_pixels))
    while (image.width // factor) * (image.height // factor) > work_pixels:
        factor += 1  # the sides round down, so the square root can fall one short
    if factor <= 1:
        return image
    if image.mode in ("P", "PA"):
        image = image.convert("LA")  # averaging palette indices would mix unrelated colours
    elif image.mode.startswith("I;16"):
        image = image.convert("I")
    elif image.mode not in ("L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F"):
        image = _to_gray(image)  # "1" and rarer modes, which reduce() does not take
    return image.reduce(factor)


def _to_gray(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> "L"; transparency is composited over white paper."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(image), image.mode))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, rgba).convert("L")
    if image.mode == "L":
        return image
    return image.convert("RGB").convert("L")  # via RGB: works for 1, P, CMYK, YCbCr, ...


def _scale_to_uint8(values: np.ndarray, mode: str = "") -> np.ndarray:
    """Integer or float gray levels -> uint8, scaling (not clipping) wide ranges."""
    values = np.nan_to_num(values.astype(np.float64))
    low, high = float(values.min()), float(values.max())
    if mode.startswith("I;16"):
        scaled = values / 257.0  # 65535 -> 255
    elif mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255.0  # floats in 0..1
    elif low >= 0 and high <= 255:
        scaled = values  # already 8-bit levels
    elif low >= 0 and high <= 65535:
        scaled = values / 257.0  # 16-bit levels stored in a wider type
    else:
        scaled = (values - low) * (255.0 / (high - low))  # anything else: stretch its range
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _array_to_gray(array: np.ndarray, source: str) -> np.ndarray:
    if array.size == 0:
        raise ImageError(f"{source}: empty image")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        if array.dtype == np.uint8:
            return array
        if array.dtype == bool:
            return array.astype(np.uint8) * 255
        return _scale_to_uint8(array, "F" if array.dtype.kind == "f" else "I")
    if array.ndim == 3 and array.shape[2] in (3, 4) and array.dtype == np.uint8:
        return np.asarray(_to_gray(Image.fromarray(array)))
    raise ImageError(f"{source}: unsupported array of shape {array.shape} and type {array.dtype}")


# --------------------------------------------------------------------------------------------
# Statistics on a 256-bin histogram (cheap even for 40-megapixel images)


def otsu_threshold(hist: np.ndarray) -> float | None:
    """The level that best splits the histogram in two (class 0 is <= it); None if uniform."""
    p = hist.astype(np.float64) / hist.sum()
    w0 = np.cumsum(p)
    mu = np.cumsum(p * np.arange(len(p)))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * (1.0 - w0))
    between[~np.isfinite(between)] = 0.0
    best = between.max()
    if best <= 0:
        return None
    # Empty bins give exact ties; the middle of the tie keeps the split centred in the gap
    return float(np.flatnonzero(between == best).mean())


def _quantile(hist: np.ndarray, q: float) -> int:
    cumulative = np.cumsum(hist)
    return int(np.searchsorted(cumulative, q * cumulative[-1]))


def _paper_noise(hist: np.ndarray, typical: int) -> float:
    """The paper's noise from a histogram of contrast (ink only adds to it): a robust standard
    deviation (1.4826 x the median deviation) of the levels at or below the typical one. Ink and
    rulings lie above it; counted in, they made a small photo crowded with digits look noisy, and
    its lighter digits too faint to be ink."""
    return 1.4826 * _quantile(hist[:typical + 1][::-1], 0.5)


# --------------------------------------------------------------------------------------------
# Preprocessing


def ink_box(image: np.ndarray) -> tuple[slice, slice] | None:
    """The rows and columns that hold ink (non-zero pixels); None for a blank image."""
    left, top, width, height = cv2.boundingRect((image > 0).astype(np.uint8))
    return (slice(top, top + height), slice(left, left + width)) if width else None


def preprocess(image: Image.Image | np.ndarray, source: str = "<image>") -> Preprocessed:
    """Turn a picture of one digit into the MNIST convention, keeping every step to look at."""
    gray = as_gray(image, source)
    found = extract_ink(gray, source)
    ink = pick_digit(found.ink)

    cropped = ink[ink_box(ink)]
    # scaled up to 20 px, a dot or a speck would be read as some digit ("0" for a single pixel)
    smallest = smallest_ink(gray.shape)
    if max(cropped.shape) < smallest:
        raise ImageError(
            f"{source}: ink too small to be a digit ({cropped.shape[1]}x{cropped.shape[0]} px in "
            f"a {gray.shape[1]}x{gray.shape[0]} image, needed: {smallest:.0f} px); a blank image, "
            "or write the digit larger")

    scaled = _scale_to_box(cropped)
    final = _paste_by_centre_of_mass(scaled)
    return Preprocessed(gray, found.inverted, ink, cropped, scaled, final, found.threshold)


def smallest_ink(shape: tuple[int, ...]) -> int:
    """The fewest pixels the ink's longer side may span in an image of this shape: 85% of
    MIN_INK_SHARE of its shorter side (a digit's faint tips and anti-aliased edges
    may fall below the ink's threshold), and MIN_INK_SIDE."""
    return max(MIN_INK_SIDE, math.ceil(0.85 * MIN_INK_SHARE * min(shape)))


def as_gray(image: Image.Image | np.ndarray, source: str = "<image>") -> np.ndarray:
    """A Pillow image or an array -> a uint8 HxW grayscale array of its own."""
    if isinstance(image, Image.Image):
        gray = np.asarray(_to_gray(image)).copy()
    else:
        gray = _array_to_gray(np.asarray(image), source).copy()
    if gray.size == 0:
        raise ImageError(f"{source}: empty image")
    return gray


def extract_ink(gray: np.ndarray, source: str = "<image>") -> Ink:
    """Grayscale -> the ink, white on black (see Ink), by the steps every image goes through
    before its crop.

    The paper is estimated locally and divided out, so that a shadow or a lighting gradient is
    not ink; ink is decided from each pixel's darkness relative to the paper around it; the ruled
    or squared lines of a notebook, and the edges of a page or a desk along the image's border,
    are taken out.
    """
    hist = np.bincount(gray.ravel(), minlength=256)
    threshold = otsu_threshold(hist)
    if threshold is None:
        raise ImageError(f"{source}: no ink found (the image is uniform)")
    inverted = light_paper(gray)
    work = 255 - gray if inverted else gray
    paper = paper_level(work)
    contrast, candidates, noise = _stand_out(work, paper, hist, source)
    # darkness relative to the paper it is on: the same for a stroke in light and in shadow
    relative = contrast / np.maximum(255.0 - paper, 32.0)
    # The edges of a desk or a shadow along the border, and the page's rulings, go before the
    # ink's darkness is judged: they would pull the split between ink and paper towards them
    kept = _drop_border_edges(candidates)
    if not kept.any():
        raise ImageError(f"{source}: no ink found apart from the edges of the picture (a page's "
                         "edge, a desk or a shadow); photograph the digit with paper around it")
    weak, ruling_angle = _remove_lines(kept, relative)
    if not weak.any():  # the lines were all there is: keep what was found rather than nothing
        weak = kept
    strong, strong_level = _strong_ink(weak, relative, contrast, noise, source)
    solid, strong = _ink_blobs(weak, strong, relative, contrast, noise)
    strong = _faint_strokes(solid, strong, relative, contrast, noise)
    ink = _stretched(relative, paper, solid, strong, strong_level, noise)
    return Ink(ink, solid & (ink > 0), inverted, float(threshold), ruling_angle)


def _stand_out(work: np.ndarray, paper: np.ndarray, hist: np.ndarray, source: str
               ) -> tuple[np.ndarray, np.ndarray, float]:
    """(contrast of each pixel against its paper, the candidates for ink, the paper's noise),
    or an error that says why nothing stands out."""
    contrast = work.astype(np.float32) - paper
    levels = np.clip(np.rint(contrast), -255, 255).astype(np.int16) + 255
    contrast_hist = np.bincount(levels.ravel(), minlength=511)
    typical = _quantile(contrast_hist, 0.5)
    noise = _paper_noise(contrast_hist, typical)
    # the opening follows the paper's grain from below: its typical pixel is the zero of contrast
    contrast -= typical - 255
    candidates = contrast >= max(MIN_CONTRAST / 2, NOISE_FACTOR / 2 * noise)
    if candidates.any():
        return contrast, candidates, noise
    if noise > VISIBLE / 2:
        raise ImageError(f"{source}: no writing found: the picture is grainy all over (noise "
                         f"{noise:.0f} gray levels), nothing stands out from it")
    if float(np.ptp(hist.nonzero()[0])) >= VISIBLE:  # dark and light parts, both large
        raise ImageError(f"{source}: no writing found: its dark parts are too large to be "
                         "strokes (a shadow, a desk, a filled shape?); photograph the writing "
                         "with paper around it")
    raise ImageError(
        f"{source}: no ink found (nothing stands out from the paper by more than "
        f"{max(MIN_CONTRAST / 2, NOISE_FACTOR / 2 * noise):.0f} gray levels: a blank or "
        "nearly uniform image)")


def _strong_ink(weak: np.ndarray, relative: np.ndarray, contrast: np.ndarray, noise: float,
                source: str) -> tuple[np.ndarray, float]:
    """The surely-ink pixels among the weak ones, and the relative darkness that splits them."""
    strong_contrast = _sure_contrast(noise)
    # Ink and faint marks differ in darkness: Otsu among what is left splits them
    strong_level = _darkness_split(relative, weak)
    strong = weak & (relative > strong_level) & (contrast >= strong_contrast)
    if not strong.any():
        # a few pixels by a dark desk's edge, faint but on paper nearly as dark, can be darker
        # relative to it than all the ink: then the split is taken among the visible pixels
        visible = weak & (contrast >= strong_contrast)
        if visible.any():
            strong_level = _darkness_split(relative, visible)
            strong = visible & (relative > strong_level)
    if not strong.any():
        best = float(contrast[weak].max())
        raise ImageError(
            f"{source}: no ink found (the darkest mark differs from the paper by {best:.0f} gray "
            f"levels, needed: {strong_contrast:.0f}; noise {noise:.1f}): a blank or nearly uniform "
            "image, or write with a darker pen")
    return strong, strong_level


def _sure_contrast(noise: float) -> float:
    """The contrast sure ink has: NOISE_FACTOR times the paper's noise, at least MIN_CONTRAST;
    ink that differs from its paper by VISIBLE gray levels is always read, whatever the noise."""
    return min(VISIBLE, max(MIN_CONTRAST, NOISE_FACTOR * noise))


def _ink_blobs(weak: np.ndarray, strong: np.ndarray, relative: np.ndarray,
               contrast: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """(solid, strong): hysteresis, the blobs of `weak` that hold a pixel of `strong`; and the
    digits written lighter than the rest of the row (another pen, less pressure), which Otsu's
    split between the darkest ink and the faint marks put with the marks: blobs of weak ink
    without a sure pixel, at least DIGIT_SIZED of the tallest ink's height and no wider than
    WIDE_DIGIT times it, off the border (where rulings and a page's edges run), whose darkest
    twentieth is visible ink and at least LIGHTER as dark, relative to its paper, as the darkest
    ink (their visible pixels become sure ink)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(weak.astype(np.uint8),
                                                                connectivity=8)
    inked = np.zeros(count, bool)
    inked[labels[strong & weak]] = True
    inked[0] = False
    solid = inked[labels]
    if not inked.any():
        return solid, strong
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    width, height = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    tallest = height[inked].max()
    maybe = (~inked & (height >= DIGIT_SIZED * tallest) & (width <= WIDE_DIGIT * tallest)
             & (left > 0) & (top > 0) & (left + width < weak.shape[1])
             & (top + height < weak.shape[0]))
    maybe[0] = False
    if not maybe.any():
        return solid, strong
    darkest = float(np.quantile(relative[solid & strong], 0.99))
    sure = _sure_contrast(noise)
    strong = strong.copy()
    for i in np.flatnonzero(maybe):
        box = (slice(top[i], top[i] + height[i]), slice(left[i], left[i] + width[i]))
        blob = labels[box] == i
        if (np.quantile(contrast[box][blob], 0.95) >= sure
                and np.quantile(relative[box][blob], 0.95) >= LIGHTER * darkest):
            solid[box] |= blob
            strong[box] |= blob & (contrast[box] >= sure)
    return solid, strong


def _darkness_split(relative: np.ndarray, pixels: np.ndarray) -> float:
    """The relative darkness that Otsu's method puts between the darker and the lighter of
    `pixels` (below all of them when they are all alike)."""
    values = np.clip(np.rint(relative[pixels] * 255), 0, 255).astype(np.uint8)
    split = otsu_threshold(np.bincount(values, minlength=256))
    return (split + 0.5) / 255 if split is not None else float(relative[pixels].min()) - 1e-6


def _faint_strokes(solid: np.ndarray, strong: np.ndarray, relative: np.ndarray,
                   contrast: np.ndarray, noise: float) -> np.ndarray:
    """The sure ink, with the pixels of each stroke that are at least FAINT as dark as its own
    darkest (a light digit beside a dark one: one split for all would leave it as dots)."""
    count, labels = cv2.connectedComponents(solid.astype(np.uint8), connectivity=8)
    if count <= 1:
        return strong
    # each stroke's darkness: its 99th percentile (its pixels sorted by stroke, then by darkness;
    # the paper, most of the picture, is left out of the sort)
    inside = np.flatnonzero(labels)
    stroke, darkness = labels.ravel()[inside], relative.ravel()[inside]
    sizes = np.bincount(stroke, minlength=count)
    darkest = darkness[np.lexsort((darkness, stroke))][
        np.clip(np.cumsum(sizes) - 1 - sizes // 100, 0, None)]
    level = (FAINT * darkest).astype(np.float32)
    level[0] = np.inf  # the paper
    return strong | ((relative > level[labels]) & (contrast >= _sure_contrast(noise)))


def _stretched(relative: np.ndarray, paper: np.ndarray, solid: np.ndarray, strong: np.ndarray,
               strong_level: float, noise: float) -> np.ndarray:
    """The ink as white on black, 0-255: soft strokes are kept (levels between the paper and the
    ink are stretched, not binarised), faint pixels only next to solid ink."""
    ink_level = float(np.quantile(relative[solid], 0.99))
    paper_range = max(255.0 - float(np.median(paper[solid])), 32.0)
    floor = min(float(strong_level), 3.0 * noise / paper_range)
    ink = (relative - floor) * (255.0 / max(ink_level - floor, 1e-3))
    np.clip(ink, 0, 255, out=ink)
    # Faint pixels elsewhere would inflate the box: paper noise (the strong pixels'
    # neighbourhood, so that JPEG's ringing does not move the ink's box)
    near = cv2.dilate((solid & strong).astype(np.uint8), np.ones((2 * EDGE_RADIUS + 1,) * 2, np.uint8))
    ink[near == 0] = 0
    return np.rint(ink).astype(np.uint8)


def light_paper(gray: np.ndarray) -> bool:
    """Is it dark ink on light paper (True) or light ink on a dark ground (False)? The paper is
    most of the picture, once the lighting is divided out: a dark desk in a corner is not most of
    it, and neither is the shadowed half of a page (which one global split would call dark)."""
    height, width = gray.shape
    scale = min(1.0, 128 / max(height, width))
    small = cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA)
    work = small.astype(np.float32)
    dark_page = float(np.median(work)) < DARK_PAGE
    # the lighting's scale: the picture's longer side, but in one far wider than high (a row of
    # digits) the root of its area, since a blur wider than the row is high mixes a shadow's
    # band with the lit paper (2,000 tuning rows and their negatives: 14 given the wrong colour,
    # against 32). Other pictures keep the wider blur: a marker's thick strokes may fill them.
    rows, columns = small.shape
    across = math.sqrt(rows * columns) if columns > ROW_SHAPE * rows else max(rows, columns)
    blurred = cv2.GaussianBlur(work, (0, 0), 0.15 * across)
    hist, paper, dark, bright = _tails(work, blurred, dark_page)
    # the ink is the long tail away from the paper: a few dark pixels far below it, or bright
    # ones far above
    clear = _longer_tail(dark, bright)
    if clear is not None:
        return clear
    # Neither is clearly longer, as when a shadow's hard edge (which the blurred lighting does
    # not follow) lengthens both: three weak verdicts vote (on the tuning photos this gave the
    # wrong colour to 18 of 3,200 photos and their negatives, against 50 for the majority alone):
    # the longer tail; the paper as the majority's side; and both again against a median-filtered
    # lighting, which follows hard edges but takes thick strokes for paper
    votes = [dark > bright, _paper_is_majority(hist, paper)]
    side = max(3, round(MEDIAN_LIGHTING * across)) | 1
    # (padded by reflection, as it was tuned: medianBlur itself only repeats the border's pixels)
    padded = cv2.copyMakeBorder(small, side // 2, side // 2, side // 2, side // 2,
                                cv2.BORDER_REFLECT)
    median = cv2.medianBlur(padded, side)[side // 2:side // 2 + small.shape[0],
                                          side // 2:side // 2 + small.shape[1]]
    hist, paper, dark, bright = _tails(work, median.astype(np.float32), dark_page)
    clear = _longer_tail(dark, bright)
    votes.append(_paper_is_majority(hist, paper) if clear is None else clear)
    return sum(votes) >= 2


def _longer_tail(dark: int, bright: int) -> bool | None:
    """Whether the dark tail is the ink's, when one tail is clearly longer; else None."""
    if max(dark, bright) >= TAIL * max(1, min(dark, bright)):
        return dark > bright
    return None


def _paper_is_majority(hist: np.ndarray, paper: int) -> bool:
    """Whether the paper's level lies on the light side of Otsu's split: light paper."""
    split = otsu_threshold(hist)
    return split is not None and paper > split


def _tails(work: np.ndarray, lighting: np.ndarray, dark_page: bool
           ) -> tuple[np.ndarray, int, int, int]:
    """The histogram of `work` (float32) with `lighting` taken out, its paper level (the median),
    and how far its darkest and brightest few pixels lie from the paper (the two tails)."""
    if dark_page:  # on a dark page the lighting's ramp is subtracted: a division keeps most of it
        flat = np.clip(np.rint(work - lighting + 128), 0, 255).astype(np.uint8)
    else:  # (+32: on dark paper the division would make its noise as bright as lit paper)
        flat = np.clip(np.rint(work / (lighting + 32.0) * 128), 0, 255).astype(np.uint8)
    hist = np.bincount(flat.ravel(), minlength=256)
    paper = _quantile(hist, 0.5)
    return hist, paper, paper - _quantile(hist, 0.0005), _quantile(hist, 0.9995) - paper


def paper_level(work: np.ndarray) -> np.ndarray:
    """The paper's level at each pixel (float32, ink bright in `work`): a grey opening with a
    window wider than any stroke, which keeps lighting gradients and the edges of shadows but
    removes the strokes; computed at most ANALYSIS_SIDE pixels across, for speed."""
    height, width = work.shape
    scale = min(1.0, ANALYSIS_SIDE / max(height, width))
    small = work if scale == 1.0 else cv2.resize(work, (max(1, round(width * scale)),
                                                       max(1, round(height * scale))),
                                                 interpolation=cv2.INTER_AREA)
    side = max(3, round(PAPER_WINDOW * min(small.shape))) | 1
    window = cv2.getStructuringElement(cv2.MORPH_RECT, (side, side))
    opened = cv2.morphologyEx(small, cv2.MORPH_OPEN, window, borderType=cv2.BORDER_REPLICATE)
    if scale == 1.0:
        return opened.astype(np.float32)
    return cv2.resize(opened.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def _remove_lines(mask: np.ndarray, relative: np.ndarray) -> tuple[np.ndarray, float | None]:
    """`mask` without the long straight lines that cross the image (a notebook's ruling or
    grid): segments of at least LINE_SPAN of the image's side. Where a stroke crosses a line, or
    runs along it darker than the line, the stroke's pixels stay. And the slope of the rulings
    that run across, in degrees (their median), or None."""
    height, width = mask.shape
    shortest = LINE_SPAN * min(height, width)
    if shortest < 12:
        return mask, None
    binary = mask.astype(np.uint8) * 255
    # found at most ANALYSIS_SIDE pixels across (the Hough transform's time grows with the
    # pixels it votes with), drawn back at full size
    scale = min(1.0, ANALYSIS_SIDE / max(height, width))
    small = binary if scale == 1.0 else cv2.resize(
        binary, (max(1, round(width * scale)), max(1, round(height * scale))),
        interpolation=cv2.INTER_AREA)
    reach = shortest * scale
    # only pixels on horizontal or vertical runs vote: a notebook's lines, not the paper's grain
    run = max(5, round(0.02 * max(small.shape)))
    small = (small > 0).astype(np.uint8)
    horizontal = cv2.morphologyEx(small, cv2.MORPH_OPEN, np.ones((1, run), np.uint8))
    vertical = cv2.morphologyEx(small, cv2.MORPH_OPEN, np.ones((run, 1), np.uint8))
    # a ruling across the page: sought among the horizontal runs, and among the vertical ones
    # (transposed, so that they are horizontal too)
    segments = np.concatenate([_long_segments(horizontal, reach),
                               _long_segments(np.ascontiguousarray(vertical.T), reach)[:, [1, 0, 3, 2]]])
    if not len(segments):
        return mask, None
    thickness = max(3, round(0.012 * max(height, width)) | 1)
    band = np.zeros_like(binary)
    slopes = []
    for x1, y1, x2, y2 in segments / scale:
        dx, dy = abs(x2 - x1), abs(y2 - y1)
        # a ruling runs across the page, within LINE_SLOPE of the horizontal or the vertical
        across = dx >= LINE_SPAN * width if dx >= dy else dy >= LINE_SPAN * height
        if across and min(dx, dy) <= LINE_SLOPE * max(dx, dy):
            cv2.line(band, (round(x1), round(y1)), (round(x2), round(y2)), 255, thickness)
            if dx >= dy:
                slopes.append(math.degrees(math.atan((y2 - y1) / (x2 - x1))))
    ruling_angle = float(np.median(slopes)) if slopes else None
    on_line = (band > 0) & mask
    if not on_line.any():
        return mask, ruling_angle
    # a pen is darker than the ruling: those pixels are ink even on a line
    line_level = float(np.median(relative[on_line]))
    darker = relative > line_level + LINE_MARGIN
    kept = mask & ~(on_line & ~darker)
    # strokes that crossed a line are joined again across it
    joined: np.ndarray = cv2.morphologyEx(kept.astype(np.uint8), cv2.MORPH_CLOSE,
                                          np.ones((thickness + 2, 1), np.uint8))
    joined |= cv2.morphologyEx(kept.astype(np.uint8), cv2.MORPH_CLOSE,
                               np.ones((1, thickness + 2), np.uint8))
    return kept | ((joined > 0) & on_line), ruling_angle


def _long_segments(voters: np.ndarray, reach: float) -> np.ndarray:
    """The straight segments (x1, y1, x2, y2: float, N x 4) at least `reach` long among `voters`
    (0 or 1), found by the probabilistic Hough transform. Its time grows with the pixels that
    vote, and a near-horizontal ruling has many (a line several pixels thick, across the image):
    so the voters are first squeezed along x by up to SQUEEZE times (a cell votes if any of its
    pixels does). A ruling stays a line, only steeper, and its segments are stretched back."""
    factor = int(min(SQUEEZE, max(1, reach // SQUEEZED_REACH)))
    height, width = voters.shape
    if factor > 1:
        cells = voters[:, :width // factor * factor] * np.uint8(255)
        voters = (cv2.resize(cells, (width // factor, height), interpolation=cv2.INTER_AREA) > 0
                  ).astype(np.uint8)
    squeezed = reach / factor
    found = cv2.HoughLinesP(voters, 1, np.pi / 180, threshold=round(0.6 * squeezed),
                            minLineLength=squeezed, maxLineGap=max(3, round(0.1 * squeezed)))
    if found is None:
        return np.zeros((0, 4))
    segments = found.reshape(-1, 4).astype(np.float64)
    segments[:, [0, 2]] = segments[:, [0, 2]] * factor + (factor - 1) / 2
    return segments


def _drop_border_edges(solid: np.ndarray) -> np.ndarray:
    """Without the blobs that fill a stretch of the image's border: a dark desk beside the page,
    a shadow's corner, a page's edge. They touch the border along BORDER_RUN of the shorter side
    or more, or along ALONG of their own extent (a wedge of desk cut off by the paper's level),
    or fill a corner; they fill at least FILLED of their box and CONVEX of their hull. A digit
    touches the border at most at a stroke's end, and strokes fill little of their box."""
    if min(solid.shape) < 16:  # a strip of an image is all border
        return solid
    # Blobs are judged without what an opening removes, and dropped with their rim: a 3x3 one
    # takes away the paper's grain along a desk's edge, which would join it to specks and make
    # it ragged; a wider one the ruled lines and the strokes that run into a desk and join it
    mask = solid.astype(np.uint8)
    wide = max(5, round(THIN_SHARE * min(solid.shape)) | 1)
    drop = np.zeros(solid.shape, bool)
    for side in (3, wide):
        drop |= _edge_blobs(cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((side, side), np.uint8)))
    if not drop.any():
        return solid
    edges = cv2.dilate(drop.astype(np.uint8), np.ones((5, 5), np.uint8))
    return solid & (edges == 0)


def _edge_blobs(core: np.ndarray) -> np.ndarray:
    """The pixels of `core`'s blobs that are a desk's or a page's edge (see _drop_border_edges)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(core, connectivity=8)
    if count <= 1:
        return np.zeros(core.shape, bool)
    contact = (np.bincount(labels[0], minlength=count) + np.bincount(labels[-1], minlength=count)
               + np.bincount(labels[:, 0], minlength=count)
               + np.bincount(labels[:, -1], minlength=count))
    width, height = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    filled = stats[:, cv2.CC_STAT_AREA] / (width * height)
    # a desk's corner: a wedge in a corner of the picture, touching two sides that meet there
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    right = left + width == core.shape[1]
    bottom = top + height == core.shape[0]
    corner = ((left == 0) | right) & ((top == 0) | bottom)
    along = contact >= ALONG * np.maximum(width, height)
    drop = ((contact > BORDER_RUN * min(core.shape)) | corner | along) & (filled >= FILLED)
    # ... and they are convex, as a desk's or a shadow's straight edges make them: a digit in
    # a corner of a tight crop is not
    for label in np.flatnonzero(drop[1:]) + 1:
        x, y, w, h = stats[label, :4]
        blob = (labels[y:y + h, x:x + w] == label).astype(np.uint8)
        contours, _ = cv2.findContours(blob, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        hull = cv2.contourArea(cv2.convexHull(np.vstack(contours)))
        drop[label] = stats[label, cv2.CC_STAT_AREA] >= CONVEX * hull
    drop[0] = False
    if not drop.any():  # the usual case: no need to look up every pixel's label
        return np.zeros(core.shape, bool)
    return drop[labels]


def pick_digit(ink: np.ndarray) -> np.ndarray:
    """The digit among the blobs of ink: the largest, and the blobs beside it that carry enough
    ink to be strokes of the same digit (a 5's bar, a 4 in two strokes); specks (dust, a pen's
    tap) and writing further away are left out, so that they do not stretch the digit's box."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((ink > 0).astype(np.uint8),
                                                                connectivity=8)
    if count <= 2:
        return ink
    mass = np.bincount(labels.ravel(), weights=ink.ravel(), minlength=count)
    mass[0] = 0
    main = int(mass.argmax())
    x, y, w, h = stats[main, :4]
    reach = NEAR * max(w, h)
    left, top, right, bottom = stats[:, 0], stats[:, 1], stats[:, 0] + stats[:, 2], \
        stats[:, 1] + stats[:, 3]
    gap_x = np.maximum(0, np.maximum(x - right, left - (x + w)))
    gap_y = np.maximum(0, np.maximum(y - bottom, top - (y + h)))
    keep = (mass >= SPECK_SHARE * mass[main]) & (np.hypot(gap_x, gap_y) <= reach)
    keep[0] = False
    return np.where(keep[labels], ink, 0).astype(np.uint8)


def _strokes(ink: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(solid: ink at half the peak or more, each solid pixel's distance to the paper, the
    strokes' width: four times its mean, as a stroke w wide has distances 0..w/2 across it)."""
    solid = (ink >= max(1, ink.max() / 2)).astype(np.uint8)
    inside = cv2.distanceTransform(np.pad(solid, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    width = 4.0 * float(inside[solid > 0].mean()) if solid.any() else 0.0
    return solid, inside, width


def stroke_width(ink: np.ndarray) -> float:
    """The strokes' width in pixels (0 for no ink)."""
    return _strokes(ink)[2]


def set_stroke_width(ink: np.ndarray, width: float) -> np.ndarray:
    """White-on-black ink redrawn with strokes `width` pixels wide: grown by the distance to the
    strokes, or thinned to what lies deep enough inside them (never losing a stroke's middle
    line, so that thinning breaks nothing). Worked out at a size where strokes span pixels."""
    height, wide = ink.shape
    scale = max(1.0, 96 / max(height, wide))
    big = cv2.resize(ink, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    solid, inside, now = _strokes(big)
    now = now or 1.0
    target = width * scale
    if target >= now:
        outside = cv2.distanceTransform(1 - solid, cv2.DIST_L2, 3)
        shape = (outside <= (target - now) / 2).astype(np.float32)
    else:
        ridge = (inside >= cv2.dilate(inside, np.ones((3, 3), np.uint8)) - 0.5) & (solid > 0)
        deep = (inside > (now - target) / 2) | ridge
        shape = cv2.dilate(deep.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(np.float32)
    soft = cv2.GaussianBlur(shape, (0, 0), 0.6)
    out = cv2.resize(soft, (wide, height), interpolation=cv2.INTER_AREA)
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


def _scale_to_box(cropped: np.ndarray) -> np.ndarray:
    """Resize so that the longer side is BOX px, aspect kept; a thin "1" keeps at least 2 px.
    Strokes thinner or thicker than MNIST's writers' (a hairline, a marker) are redrawn at the
    edge of MNIST's range first, so the network sees the kind of stroke it knows."""
    height, width = cropped.shape
    factor = BOX / max(height, width)
    # measured where the box is 4 times BOX, for sub-pixel precision
    fine = 4 * BOX / max(height, width)
    preview = cv2.resize(cropped, (max(1, round(width * fine)), max(1, round(height * fine))),
                         interpolation=cv2.INTER_AREA if fine < 1 else cv2.INTER_LINEAR)
    now = stroke_width(preview) / 4
    if cropped.any() and (now < THINNEST or now > THICKEST):
        wanted = (THINNEST + 0.5 if now < THINNEST else THICKEST - 1.0) / factor
        pad = math.ceil(wanted / 2) + 1  # room to grow
        redrawn = set_stroke_width(np.pad(cropped, pad), wanted)
        box = ink_box(redrawn)
        if box is not None:  # a speck too faint to redraw keeps its own ink
            cropped = redrawn[box]
            height, width = cropped.shape
            factor = BOX / max(height, width)
    # a narrow "1" keeps at least 2 px, as MNIST's thinnest do: at 1 px it reads as no digit
    size = (max(2, round(width * factor)), max(2, round(height * factor)))
    resized = Image.fromarray(cropped).resize(size, Image.Resampling.LANCZOS)
    scaled = np.asarray(resized).astype(np.float64)
    # Thin strokes shrink to gray: bring the brightest back to 255, as in MNIST
    peak = scaled.max()
    if peak > 0:
        scaled *= 255.0 / peak
    return np.rint(scaled).astype(np.uint8)


def mnist_field(cropped: np.ndarray) -> np.ndarray:
    """Ink cropped to its bounding box -> the 28x28 MNIST field (scaled, pasted by mass)."""
    return _paste_by_centre_of_mass(_scale_to_box(cropped))


def _paste_by_centre_of_mass(scaled: np.ndarray) -> np.ndarray:
    height, width = scaled.shape
    moments = cv2.moments(scaled)  # ink-weighted, as MNIST's centre of mass
    if moments["m00"] == 0:  # a faint sliver that scaling rounded away: nothing to place
        return np.zeros((FIELD, FIELD), dtype=np.uint8)
    row, col = moments["m01"] / moments["m00"], moments["m10"] / moments["m00"]
    # Whole-pixel shift, as MNIST did; clamped so that no ink leaves the field
    top = int(np.clip(np.floor(MNIST_CENTRE - row + 0.5), 0, FIELD - height))
    left = int(np.clip(np.floor(MNIST_CENTRE - col + 0.5), 0, FIELD - width))
    final = np.zeros((FIELD, FIELD), dtype=np.uint8)
    final[top:top + height, left:left + width] = scaled
    return final


def png_bytes(final: np.ndarray) -> bytes:
    """A gray image (the 28x28 field the network sees) encoded as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(final).save(buffer, format="PNG")
    return buffer.getvalue()


def to_tensor(final: np.ndarray) -> torch.Tensor:
    """A 28x28 uint8 image -> a uint8 tensor (1, 28, 28); the model scales to 0..1 itself."""
    if final.shape != (FIELD, FIELD) or final.dtype != np.uint8:
        raise ImageError(f"expected a {FIELD}x{FIELD} uint8 image, got {final.shape} {final.dtype}")
    return torch.from_numpy(np.ascontiguousarray(final)).unsqueeze(0)


def load_and_preprocess(
    source: str | os.PathLike | bytes, max_pixels: int = MAX_PIXELS, name: str | None = None,
    work_pixels: int | None = WORK_PIXELS,
) -> Preprocessed:
    name = name or source_name(source)
    return preprocess(load_image(source, max_pixels, name, work_pixels), source=name)


def collect_images(paths: list[str | os.PathLike]) -> list[Path]:
    """Files as given (missing ones too: the caller reports them); folders -> their images."""
    found: list[Path] = []
    for item in paths:
        path = Path(item)
        try:
            if path.is_dir():
                # not only regular files: a broken or looping link among the photos is then
                # reported (by load_image) rather than silently skipped
                found.extend(sorted(p for p in path.iterdir()
                                    if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()))
            else:
                found.append(path)
        except OSError as e:
            raise ImageError(f"{path}: cannot read the folder ({path_problem(path, e)})") from None
    return found
