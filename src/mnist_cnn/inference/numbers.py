"""A row of handwritten digits -> a number: the ink split into digits, each read as one.

Steps: the image goes through imaging.py's first steps (grayscale, polarity, background
suppression); the solid ink is cut into connected components (soft edge pixels go to the
component beside them), specks are dropped, pieces whose columns mostly overlap are merged (a "5"
or a "7" written in two strokes), and a piece too wide for the row's digit height is cut in two
where the network reads both halves most confidently (again on each half: three touching digits).
Each piece, left to right, is then brought into the MNIST field like a single digit
(imaging.mnist_field) and read by the same network(s).

Boxes are [left, top, right, bottom] in the image's pixels, right and bottom exclusive (as Pillow's
getbbox).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import nn

from ..images.preprocess import (
    MIN_INK_SIDE,
    SPECK_SHARE,
    ImageError,
    as_gray,
    extract_ink,
    ink_box,
    mnist_field,
    smallest_ink,
    stroke_width,
)
from ..opencv import cv2
from ..runtime.device import Runtime
from .calibration import Calibrated
from .ensemble import ensemble_proba
from .evaluation import CPU, ranked
from .novelty import is_digit

MAX_DIGITS = 32  # a longer row is refused: it is no number anybody writes by hand
MAX_PIECES = 4 * MAX_DIGITS  # separate blobs (after specks) looked at, at most
MERGE_OVERLAP = 0.5  # pieces sharing this share of the narrower one's columns are one digit...
FRAGMENT = 0.7  # ... when one of them is shorter than this share of the row's digit height
SMALL = 0.3  # a piece lower and narrower than this share of the digit height is no digit (a dot)
SPLIT_ASPECT = 0.7  # a piece wider than this share of its height may hold touching digits...
FORCE_ASPECT = 2.2  # ... and one wider than this is cut whatever the network says
# Cut when log p(left) + log p(right) > log p(whole) - SPLIT_SLOPE * (aspect - 1): the wider the
# piece, the likelier it holds two digits (tuned on rows of MNIST validation digits)
SPLIT_SLOPE = 0.3
MIN_PART = 0.12  # each side of a cut is at least this share of the height wide
CUTS_TRIED = 6  # cut columns tried per piece: the lowest minima of the ink's column profile
MAX_DEPTH = 4  # cuts within cuts: up to five touching digits read apart
JOIN = 0.6  # blobs closer than this many stroke widths are one piece
CUT_SOFTENING = 2.0  # cuts are chosen at this many times the calibrated temperature (tuned on
# rows of MNIST validation digits, of font digits and on the photos' tuning split)
BLOCK = 0.85  # a piece filling this share of its box is a filled shape, not a digit

Proba = Callable[[torch.Tensor], torch.Tensor]  # uint8 (N, 1, 28, 28) -> probabilities (N, C)


@dataclass
class Piece:
    """One digit's ink: `mask` (bool) covers the box whose top-left corner is (top, left)."""

    top: int
    left: int
    mask: np.ndarray

    @property
    def height(self) -> int:
        return self.mask.shape[0]

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    @property
    def right(self) -> int:
        return self.left + self.width

    @property
    def bottom(self) -> int:
        return self.top + self.height

    def box(self) -> list[int]:
        return [self.left, self.top, self.right, self.bottom]


@dataclass
class NumberReading:
    number: str
    digits: list[dict]  # {"digit", "index", "probability", "is_digit", "box", "top_k"}, in order
    inverted: bool  # True when the image was dark ink on light paper
    is_digit: bool = True  # False when some piece looks like no digit (novelty.py)


def tight(top: int, left: int, mask: np.ndarray) -> Piece | None:
    """The piece cropped to its own pixels (None when it has none)."""
    box = ink_box(mask)
    if box is None:
        return None
    rows, cols = box
    return Piece(top + rows.start, left + cols.start, mask[box])


def is_block(piece: Piece) -> bool:
    """A filled shape, not a stroke: it fills BLOCK of its box, which is at least half as wide
    as it is tall (a "1" fills its narrow box too)."""
    return piece.width >= 0.5 * piece.height and float(piece.mask.mean()) >= BLOCK


def union(a: Piece, b: Piece) -> Piece:
    top, left = min(a.top, b.top), min(a.left, b.left)
    mask = np.zeros((max(a.bottom, b.bottom) - top, max(a.right, b.right) - left), dtype=bool)
    for p in (a, b):
        mask[p.top - top:p.bottom - top, p.left - left:p.right - left] |= p.mask
    return Piece(top, left, mask)


def field(ink: np.ndarray, piece: Piece) -> torch.Tensor:
    """The piece's ink (its neighbours' masked out) in the MNIST field, as a (1, 28, 28) tensor."""
    crop = np.where(piece.mask, ink[piece.top:piece.bottom, piece.left:piece.right], 0)
    return torch.from_numpy(mnist_field(crop.astype(np.uint8))).unsqueeze(0)


# --------------------------------------------------------------------------------------------
# Finding the pieces


def components(ink: np.ndarray, solid: np.ndarray, source: str) -> list[Piece]:
    """Connected blobs of solid ink with their soft edges, specks dropped. Blobs less than
    about a stroke's width apart are one (a pencil's grain or a light pen breaks strokes)."""
    reach = max(1, round(JOIN * stroke_width(ink)))
    joined = cv2.dilate(solid.astype(np.uint8), np.ones((2 * reach + 1, 2 * reach + 1), np.uint8))
    labels, count = ndimage.label(joined, structure=np.ones((3, 3), dtype=bool))
    labels = np.where(solid, labels, 0)
    # soft edge pixels belong to the blob beside them (extract_ink keeps them only there)
    grown = ndimage.grey_dilation(labels, size=(5, 5))
    owner = np.where(labels > 0, labels, np.where(ink > 0, grown, 0))
    mass = ndimage.sum_labels(ink, owner, index=np.arange(1, count + 1))
    keep = np.flatnonzero(mass >= SPECK_SHARE * mass.max()) + 1
    if len(keep) > MAX_PIECES:
        raise ImageError(f"{source}: too many separate pieces of ink ({len(keep)}): more than "
                         f"{MAX_DIGITS} digits, or a noisy picture")
    slices = ndimage.find_objects(owner)
    return [Piece(slices[i - 1][0].start, slices[i - 1][1].start, owner[slices[i - 1]] == i)
            for i in keep]


def digit_height(pieces: Sequence[Piece]) -> float:
    """The row's digit height: the median height of the pieces at least half as tall as the
    tallest (fragments of broken digits left out)."""
    heights = np.array([p.height for p in pieces])
    return float(np.median(heights[heights >= 0.5 * heights.max()]))


def merge_fragments(pieces: list[Piece], height: float) -> list[Piece]:
    """Pieces above one another (mostly the same columns, one of them short) become one."""
    pieces = sorted(pieces, key=lambda p: p.left)
    merged = True
    while merged:
        merged = False
        for i in range(len(pieces)):
            for j in range(i + 1, len(pieces)):
                a, b = pieces[i], pieces[j]
                overlap = min(a.right, b.right) - max(a.left, b.left)
                if (overlap >= MERGE_OVERLAP * min(a.width, b.width)
                        and min(a.height, b.height) < FRAGMENT * height):
                    pieces[i] = union(a, b)
                    del pieces[j]
                    merged = True
                    break
            if merged:
                break
    return pieces


def cut_columns(piece: Piece, ink: np.ndarray, height: float) -> list[int]:
    """Where to try a cut: the lowest local minima of the piece's column ink profile."""
    crop = np.where(piece.mask, ink[piece.top:piece.bottom, piece.left:piece.right], 0)
    profile = ndimage.uniform_filter1d(crop.sum(axis=0, dtype=np.float64), 3)
    margin = max(1, round(MIN_PART * height))
    inside = np.arange(margin, piece.width - margin + 1)
    if inside.size == 0:
        return []
    minima = inside[profile[inside] <= ndimage.minimum_filter1d(profile, 5)[inside]]
    if minima.size == 0:
        minima = inside
    return [int(c) for c in minima[np.argsort(profile[minima], kind="stable")][:CUTS_TRIED]]


def split_wide(piece: Piece, ink: np.ndarray, height: float, proba: Proba,
               depth: int = 0) -> list[Piece]:
    """The piece, or its parts if it reads better as touching digits."""
    height = max(height, piece.height)
    if piece.width <= SPLIT_ASPECT * height or depth >= MAX_DEPTH or is_block(piece):
        return [piece]  # a solid block is no row of ones: it stays whole, and no digit
    options = []
    for c in cut_columns(piece, ink, height):
        left = tight(piece.top, piece.left, piece.mask[:, :c])
        right = tight(piece.top, piece.left + c, piece.mask[:, c:])
        # a cut leaving a fragment (a curl's tip, a bar's end) on one side parts no two digits
        if (left is not None and right is not None
                and min(left.height, right.height) >= FRAGMENT * height):
            options.append((left, right))
    if not options:
        return [piece]
    images = [field(ink, piece)] + [field(ink, p) for pair in options for p in pair]
    confidence = proba(torch.stack(images)).max(dim=1).values.double()
    whole = float(confidence[0])
    pairs = confidence[1:].view(-1, 2).log().sum(dim=1)
    best = int(pairs.argmax())
    aspect = piece.width / height
    if (aspect <= FORCE_ASPECT
            and float(pairs[best]) <= np.log(whole) - SPLIT_SLOPE * (aspect - 1)):
        return [piece]
    left, right = options[best]
    return (split_wide(left, ink, height, proba, depth + 1)
            + split_wide(right, ink, height, proba, depth + 1))


def segment(image: Image.Image | np.ndarray, proba: Proba, source: str = "<image>"
            ) -> tuple[list[Piece], np.ndarray, bool]:
    """The digits' pieces, left to right; the ink (white on black) they cover; and whether the
    image was inverted. `proba` reads 28x28 images, to choose where touching digits are cut."""
    gray = as_gray(image, source)
    ink, solid, inverted, _ = extract_ink(gray, source)
    pieces = components(ink, solid, source)
    span = max(max(p.bottom for p in pieces) - min(p.top for p in pieces),
               max(p.right for p in pieces) - min(p.left for p in pieces))
    smallest = smallest_ink(gray.shape)
    if span < smallest:
        raise ImageError(f"{source}: ink too small to be digits ({span} px in a "
                         f"{gray.shape[1]}x{gray.shape[0]} image, needed: {smallest:.0f} px)")
    height = digit_height(pieces)
    if height < MIN_INK_SIDE:  # a line, a 1-pixel-high image: no digit is this flat
        raise ImageError(f"{source}: ink too flat to be digits ({height:.0f} px high, needed: "
                         f"{MIN_INK_SIDE} px)")
    pieces = merge_fragments(pieces, height)
    pieces = [p for p in pieces if max(p.height, p.width) >= SMALL * height]
    if len(pieces) > MAX_DIGITS:
        raise ImageError(f"{source}: {len(pieces)} pieces of ink; at most {MAX_DIGITS} digits "
                         "are read")
    found: list[Piece] = []
    for piece in pieces:
        found.extend(split_wide(piece, ink, height, proba))
        if len(found) > MAX_DIGITS:
            raise ImageError(f"{source}: more than {MAX_DIGITS} digits; at most {MAX_DIGITS} "
                             "are read")
    return sorted(found, key=lambda p: (p.left + p.right)), ink, inverted


# --------------------------------------------------------------------------------------------
# Reading


def read_number(image: Image.Image | np.ndarray, models: Sequence[nn.Module],
                classes: Sequence[str], runtime: Runtime = CPU, top_k: int = 3,
                source: str = "<image>", scale: float = 1.0,
                digit_threshold: float | None = None) -> NumberReading:
    """Read the row of digits in `image`. Boxes are multiplied by `scale` (for an image that was
    shrunk before reading: boxes in the original's pixels). A piece whose best probability is
    under `digit_threshold` is marked as no digit (novelty.py)."""
    def proba(images: torch.Tensor) -> torch.Tensor:
        return ensemble_proba(models, images, runtime=runtime)

    # where to cut touching digits is decided on softened calibrated probabilities: the
    # calibrated ones are so sharp that the halves of one digit read as two sure digits, and the
    # shipped network's raw ones so flat on a photo that no cut looks better than none
    cutting = [Calibrated(m.network, CUT_SOFTENING * m.temperature) if isinstance(m, Calibrated)
               else m for m in models]

    def cut_proba(images: torch.Tensor) -> torch.Tensor:
        return ensemble_proba(cutting, images, runtime=runtime)

    pieces, ink, inverted = segment(image, cut_proba, source)
    probabilities = proba(torch.stack([field(ink, p) for p in pieces]))
    digits: list[dict[str, Any]] = []
    looks_like_digits = [digit and not is_block(piece) for digit, piece in
                         zip(is_digit(probabilities, digit_threshold).tolist(), pieces)]
    for piece, p, looks_like_digit in zip(pieces, probabilities, looks_like_digits):
        best = int(p.argmax())
        digits.append({
            "digit": classes[best],
            "index": best,
            "probability": float(p[best]),
            "is_digit": looks_like_digit,
            "box": [round(v * scale) for v in piece.box()],
            "top_k": ranked(p, classes, top_k),
        })
    return NumberReading("".join(d["digit"] for d in digits), digits, inverted,
                         all(looks_like_digits))
