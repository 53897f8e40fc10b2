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
