"""Images made here, not taken from MNIST: font glyphs to build test sets from.

The fonts are the ones matplotlib ships (DejaVu, STIX, Computer Modern), so every machine with
mnist-cnn installed has the same ones and a seed gives the same images everywhere.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

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
    left, top, right, bottom = face.getbbox(text)
    canvas = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(canvas).text((2 - left, 2 - top), text, fill=255, font=face)
    ink = np.asarray(canvas)
    rows, cols = np.nonzero(ink)
    if rows.size == 0:
        return ink
    return ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1].copy()


# --------------------------------------------------------------------------------------------
# Rows of digits (numbers), to test reading whole numbers


def crop_ink(image: np.ndarray) -> np.ndarray:
    """A white-on-black image cropped to its ink."""
    rows, cols = np.nonzero(image)
    if rows.size == 0:
        return image
    return image[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def compose_row(glyphs: list[np.ndarray], rng: np.random.Generator, height: int = 48,
                touching: float = 0.2) -> tuple[np.ndarray, list[list[int]]]:
    """Glyphs (white on black, any size) side by side as one number: dark ink on light paper.

    Each glyph is scaled to about `height` rows (+-12%), its baseline wobbles (+-8% of the
    height), and the gaps are random: with probability `touching` a pair touches or overlaps by up
    to 12% of the height, otherwise 5% to 60% of the height lies between them. Returns the uint8
    image and each glyph's box [left, top, right, bottom] (right and bottom exclusive).
    """
    scaled = []
    for glyph in glyphs:
        glyph = crop_ink(glyph)
        h = max(4, round(height * rng.uniform(0.88, 1.12)))
        w = max(1, round(glyph.shape[1] * h / glyph.shape[0]))
        scaled.append(np.asarray(Image.fromarray(glyph).resize((w, h), Image.Resampling.BICUBIC)))
    margin = height // 2
    shifts = rng.uniform(-0.08, 0.08, len(glyphs)) * height
    gaps = np.where(rng.random(len(glyphs)) < touching, rng.uniform(-0.12, 0.0, len(glyphs)),
                    rng.uniform(0.05, 0.6, len(glyphs))) * height
    width = sum(g.shape[1] for g in scaled) + int(np.clip(gaps, 0, None).sum()) + 2 * margin
    canvas = np.zeros((round(1.4 * height) + 2 * margin, width), dtype=np.uint8)
    boxes, x = [], margin
    for glyph, shift, gap in zip(scaled, shifts, gaps):
        h, w = glyph.shape
        # glyphs stand on a common baseline, as written digits do
        bottom = margin + round(1.2 * height + shift)
        top = bottom - h
        region = canvas[top:bottom, x:x + w]
        np.maximum(region, glyph, out=region)
        boxes.append([x, top, x + w, bottom])
        x += w + round(gap)
    ink = canvas[:, :max(b[2] for b in boxes) + margin]
    return (255 - ink).astype(np.uint8), boxes


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
