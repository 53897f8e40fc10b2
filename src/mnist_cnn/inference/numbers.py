"""A row of handwritten digits -> a number: the ink split into digits, each read as one.

Steps: the image goes through imaging.py's first steps (grayscale, polarity, background
suppression); lines drawn under the digits are taken out; the solid ink is cut into connected
components (soft edge pixels go to the component beside them), specks are dropped, pieces whose
columns mostly overlap are merged (a "5" or a "7" written in two strokes), dots and dashes are
dropped, and a piece too wide for the row's digit height is cut where the network reads its parts
most confidently as digits (all the ways to cut it weighed together: three touching digits), or
parted among the blobs it was joined from (digits a few pixels apart whose columns overlap); when
a part of the best of those reads as no digit, the cuts may also bend around the ink (touching
digits whose columns overlap). Each way is weighed by how well its parts read as digits and by how
sure a second, small network is that each part holds one whole digit (the whole-digit check:
the digit network alone reads "31" as a sure 3, and half of a 0 as a sure 1).
Each piece, left to right, is then brought into the MNIST field like a single digit
(imaging.mnist_field) and read by the same network(s).

Boxes are [left, top, right, bottom] in the image's pixels, right and bottom exclusive (as Pillow's
getbbox).
"""

from __future__ import annotations

import functools
import itertools
import math
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
    WORK_PIXELS,
    ImageError,
    as_gray,
    extract_ink,
    ink_box,
    mnist_field,
    smallest_ink,
    stroke_width,
)
from ..models.checkpoint import load_whole_digit
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
SMALL = 0.3  # a piece lower than this share of the digit height is no digit (a dot, a dash, an
# underline, what is left of a desk's or a page's edge)
UNDERLINE = 1.2  # a stroke that flat and this many times wider than the digit height underlines
SPLIT_ASPECT = 0.7  # a piece wider than this share of its height may hold touching digits...
FORCE_ASPECT = 2.2  # ... and no part wider than this is read as one digit, whatever the network says
# A way to cut a piece scores the sum over its parts of log p(part), less WIDTH_COST * (aspect - 1)
# for each part wider than tall: the wider a part, the likelier it holds two digits (tuned on the
# photos' tuning split and rows of MNIST validation digits: 2 read as many photos and 5 points
# fewer rows)
WIDTH_COST = 0.3
MIN_PART = 0.12  # each side of a cut is at least this share of the height wide
CUTS_TRIED = 8  # cut columns tried per piece: the lowest minima of the ink's column profile, or
# two per digit height of its width, up to MAX_CUTS (all parts between two cuts are read: 300 then)
MAX_CUTS = 24
GRID = 8  # ... and this many columns evenly spaced across the piece: digits whose columns overlap
# leave no minimum where they touch (tuned on the photos' tuning split with the whole-digit check)
SURE_WHOLE = 0.9  # a piece the whole-digit check is this sure of is not cut (0.8-0.98 read alike)
# a piece too narrow to hold touching digits is weighed as several all the same when the check
# gives it less than this (a 1 touching its neighbour; 0.1 and 0.3 read 1,200 tuning rows alike)
DOUBTFUL = 0.1
NOT_WHOLE = 0.01  # a part the check gives less is no whole digit: the digit network skips it
NO_DIGIT = 0.1  # ... and counts as read this surely (the least a best class of ten can be)
MIN_WHOLE = 1e-4  # the whole-digit check's probability counts for at least this (log: -9.2)
JOIN = 0.6  # blobs closer than this many stroke widths are one piece
ENLARGED_HEIGHT = 160  # a picture lower than this is enlarged to it before its ink is found...
MAX_ENLARGEMENT = 4.0  # ... at most this many times
LONG_ROW = 2.5  # a row this many times longer than its ink is high may be levelled...
LEVEL, STEEP = 4.0, 20.0  # ... when it slopes by this many degrees or more, up to these
MAX_BLOBS = 8  # a wide piece joined from more blobs than this is cut at columns only
CUT_SOFTENING = 2.0  # cuts are chosen at this many times the calibrated temperature (tuned on
# rows of MNIST validation digits, of font digits and on the photos' tuning split)
BLOCK = 0.85  # a piece filling this share of its box is a filled shape, not a digit
# When some part of the best straight cut reads as no digit (under UNSURE, softened), the cuts
# may bend: each follows the path from top to bottom that crosses the least ink within
# BEND of the height of its column, each step sideways costing BEND_COST gray levels (tuned on
# the photos' tuning split: 329 and 353 of two sets of 400 rows against 326 and 350)
UNSURE = 0.5
BEND = 0.2
BEND_COST = 40.0

Proba = Callable[[torch.Tensor], torch.Tensor]  # uint8 (N, 1, 28, 28) -> probabilities (N, C)
# The whole-digit check's classes, in the order of its outputs
WHOLE_DIGIT_CLASSES = ("not one whole digit", "one whole digit")


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


def without_underlines(solid: np.ndarray) -> np.ndarray:
    """The solid ink without the strokes that underline the number: flatter than SMALL of the
    digit height and UNDERLINE times wider. Joined to the digits above it (as a 5's bar is to
    its 5), such a line would make one piece of them all."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(solid.astype(np.uint8),
                                                                connectivity=8)
    heights, widths = stats[1:, cv2.CC_STAT_HEIGHT], stats[1:, cv2.CC_STAT_WIDTH]
    if count <= 2:
        return solid
    height = digit_height(heights)
    line = (heights < SMALL * height) & (widths >= UNDERLINE * height)
    if not line.any() or line.all():
        return solid
    return solid & ~np.concatenate([[False], line])[labels]


def components(ink: np.ndarray, solid: np.ndarray, source: str) -> list[Piece]:
    """Connected blobs of solid ink with their soft edges, specks dropped. Blobs less than
    about a stroke's width apart are one (a pencil's grain or a light pen breaks strokes)."""
    solid = without_underlines(solid)
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


def digit_height(heights: Sequence[int] | np.ndarray) -> float:
    """The row's digit height from its pieces' heights: the median of those at least half as
    tall as the tallest (fragments of broken digits left out)."""
    heights = np.asarray(heights)
    return float(np.median(heights[heights >= 0.5 * heights.max()]))


def off_row_dropped(pieces: list[Piece], height: float) -> list[Piece]:
    """The pieces that share some rows with the row of digits (the band between the lines
    fitted through the tops and through the bottoms of its pieces a digit tall, so that a
    sloping row keeps its ends): a mark wholly above or below it (the end of a desk's edge, a
    grid's stub) is no digit of the number."""
    tall = [p for p in pieces if p.height >= FRAGMENT * height]
    if len(pieces) < 2 or not tall:
        return pieces
    centres = np.array([(p.left + p.right) / 2 for p in tall])
    tops, bottoms = np.array([p.top for p in tall]), np.array([p.bottom for p in tall])
    degree = 1 if np.ptp(centres) > 0 else 0
    top, bottom = np.polyfit(centres, tops, degree), np.polyfit(centres, bottoms, degree)

    def on_row(piece: Piece) -> bool:
        x = (piece.left + piece.right) / 2
        return bool(piece.bottom > np.polyval(top, x) and piece.top < np.polyval(bottom, x))

    return [p for p in pieces if on_row(p)] or pieces


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


def cut_columns(piece: Piece, ink: np.ndarray, height: float, grid: bool = True) -> list[int]:
    """Where to try a cut: the lowest local minima of the piece's column ink profile and, with
    `grid`, GRID evenly spaced columns (overlapping digits leave no minimum where one ends; the
    whole-digit check tells a cut there from one through a digit, the digit network alone not)."""
    crop = np.where(piece.mask, ink[piece.top:piece.bottom, piece.left:piece.right], 0)
    profile = ndimage.uniform_filter1d(crop.sum(axis=0, dtype=np.float64), 3)
    margin = max(1, round(MIN_PART * height))
    inside = np.arange(margin, piece.width - margin + 1)
    if inside.size == 0:
        return []
    minima = inside[profile[inside] <= ndimage.minimum_filter1d(profile, 5)[inside]]
    if minima.size == 0:
        minima = inside
    # the lowest first, each at least a part's width from those already taken (a gap's flat
    # bottom is one place to cut, not many)
    wanted = min(MAX_CUTS, max(CUTS_TRIED, math.ceil(2 * piece.width / height)))
    chosen: list[int] = []
    for c in minima[np.argsort(profile[minima], kind="stable")]:
        if all(abs(int(c) - k) >= margin for k in chosen):
            chosen.append(int(c))
            if len(chosen) == wanted:
                break
    if not grid:
        return chosen
    step = max(margin, piece.width / GRID)
    for c in np.round(np.arange(margin, piece.width - margin + 1, step)).astype(int).tolist():
        if all(abs(c - k) >= max(1, margin // 2) for k in chosen):
            chosen.append(c)
    return chosen


def bent_cuts(piece: Piece, ink: np.ndarray, edges: list[int], height: float
              ) -> list[np.ndarray]:
    """For each cut column in `edges` (the first and last are the piece's sides), the column the
    cut takes in each row: the path crossing the least ink (seam carving's dynamic programming),
    within BEND of the height of the column and never left of the cut before it."""
    rows, reach = piece.height, max(1, round(BEND * height))
    crop = np.where(piece.mask, ink[piece.top:piece.bottom, piece.left:piece.right], 0)
    paths = [np.zeros(rows, np.int64)]
    for column in edges[1:-1]:
        lo, hi = max(1, column - reach), min(piece.width - 1, column + reach + 1)
        if hi <= lo:  # a sliver of a piece: nowhere to bend
            paths.append(np.maximum(np.full(rows, column), paths[-1]))
            continue
        offset = np.abs(np.arange(lo, hi) - column)
        cost = crop[:, lo:hi].astype(np.float64) + BEND_COST * offset / reach
        came = np.zeros(cost.shape, np.int64)  # -1, 0, +1: the column step from the row above
        for y in range(1, rows):
            above = cost[y - 1]
            options = np.stack([np.r_[np.inf, above[:-1]] + BEND_COST, above,
                                np.r_[above[1:], np.inf] + BEND_COST])
            step = options.argmin(axis=0)
            cost[y] += options[step, np.arange(hi - lo)]
            came[y] = step - 1
        path, x = np.empty(rows, np.int64), int(cost[-1].argmin())
        for y in range(rows - 1, -1, -1):
            path[y] = x + lo
            x += came[y, x]
        paths.append(np.maximum(path, paths[-1]))
    paths.append(np.full(rows, piece.width))
    return paths


def readable_parts(piece: Piece, count: int, mask: Callable[[int, int], np.ndarray],
                   height: float) -> dict[tuple[int, int], Piece]:
    """The readable parts of a piece split into `count` atoms, by the atoms they span: `mask(i,
    j)` is the piece's pixels of atoms i to j (within its box)."""
    spans: dict[tuple[int, int], Piece] = {}
    for i, j in itertools.combinations(range(count + 1), 2):
        part = tight(piece.top, piece.left, mask(i, j))
        if part is not None and readable(part, (i, j) == (0, count), height):
            spans[i, j] = part
    return spans


def parts_between(piece: Piece, paths: list[np.ndarray], height: float
                  ) -> dict[tuple[int, int], Piece]:
    """The readable parts between every two cuts (each a column per row), by their indices."""
    columns = np.arange(piece.width)
    return readable_parts(piece, len(paths) - 1, lambda i, j: piece.mask & (
        columns >= paths[i][:, None]) & (columns < paths[j][:, None]), height)


def readable(part: Piece, whole: bool, height: float) -> bool:
    """Whether a part of a wide piece may be read as one digit: a part far wider than a digit
    holds more than one, and a part that is only a fragment (a curl's tip, a bar's end) is no
    digit of its own."""
    return part.width <= FORCE_ASPECT * height and (whole or part.height >= FRAGMENT * height)


def best_partition(spans: dict[tuple[int, int], Piece], count: int, ink: np.ndarray,
                   height: float, proba: Proba, whole: Proba | None = None
                   ) -> tuple[float, list[Piece], float]:
    """Of the ways to cover atoms 0..count (columns between cuts, or blobs left to right) with
    the parts in `spans` (atoms i to j -> part), the one whose parts read best as digits of a
    digit's width (and, with `whole`, the whole-digit check's probabilities, as whole digits),
    its score, and how sure the networks are of its least sure part: dynamic programming, so
    that three or more touching digits are weighed as such, not as a digit beside a pair that
    reads as nothing."""
    if not spans:
        return -math.inf, [], 0.0
    keys = list(spans)
    fields = torch.stack([field(ink, spans[k]) for k in keys])
    if whole is None:
        digit = proba(fields).max(dim=1).values
        one = torch.ones_like(digit)
    else:
        # the digit network (the slower one) reads only the parts that may be whole digits:
        # the others count as read as no digit at all (a tenth for each class)
        one = whole(fields)[:, 1].clamp_min(MIN_WHOLE)
        digit = torch.full_like(one, NO_DIGIT)
        maybe = one >= NOT_WHOLE
        if bool(maybe.any()):
            digit[maybe] = proba(fields[maybe]).max(dim=1).values
    # how sure of a part: that it is one whole digit, and which
    confidence = dict(zip(keys, torch.minimum(digit, one).tolist()))
    score = {k: math.log(d) + math.log(o) - WIDTH_COST * max(0.0, spans[k].width / height - 1.0)
             for k, d, o in zip(keys, digit.tolist(), one.tolist())}
    # best[j]: the best score of atoms up to j read as digits, and where its last part starts
    best: list[tuple[float, int]] = [(0.0, -1)] + [(-math.inf, -1)] * count
    for j in range(1, count + 1):
        for i in range(j):
            if (i, j) in score and best[i][0] > -math.inf:
                total = best[i][0] + score[i, j]
                if total > best[j][0]:
                    best[j] = (total, i)
    if best[count][0] == -math.inf:
        return -math.inf, [], 0.0
    parts, weakest, j = [], 1.0, count
    while j > 0:
        i = best[j][1]
        parts.append(spans[i, j])
        weakest = min(weakest, confidence[i, j])
        j = i
    return best[count][0], parts[::-1], weakest


def blobs(piece: Piece, solid: np.ndarray) -> list[np.ndarray]:
    """The piece's pixels split among the solid blobs it was joined from (components joins
    blobs a stroke's width apart: a broken stroke, or two digits that nearly touch), left to
    right; blobs with less than SPECK_SHARE of the largest one's pixels, and the soft edges,
    go to the blob nearest them. At most MAX_BLOBS (none when there are more)."""
    inside = solid[piece.top:piece.bottom, piece.left:piece.right] & piece.mask
    labels, count = ndimage.label(inside, structure=np.ones((3, 3), dtype=bool))
    if count < 2:
        return []
    sizes = ndimage.sum_labels(inside, labels, index=np.arange(1, count + 1))
    big = np.flatnonzero(sizes >= SPECK_SHARE * sizes.max()) + 1
    if not 2 <= len(big) <= MAX_BLOBS:
        return []
    seeds = np.where(np.isin(labels, big), labels, 0)
    _, (rows, cols) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    nearest = np.where(piece.mask, seeds[rows, cols], 0)
    centres = ndimage.center_of_mass(inside, nearest, big)
    return [nearest == big[k] for k in np.argsort([c[1] for c in centres], kind="stable")]


def may_hold_several(piece: Piece, height: float, solid: np.ndarray) -> bool:
    """Whether a piece may hold more than one digit: it is wide enough to hold touching digits,
    or it was joined from two blobs each nearly a digit tall (two 1s whose flags reach over each
    other are narrower than most single digits). A solid block is no row of ones: it stays
    whole, and no digit."""
    if is_block(piece):
        return False
    if piece.width > SPLIT_ASPECT * height:
        return True
    tall = [group for group in blobs(piece, solid)
            if np.count_nonzero(group.any(axis=1)) >= FRAGMENT * height]
    return len(tall) >= 2


@dataclass
class Partitions:
    """The parts a wide piece may be read as, in three families of atoms: the columns between
    straight cuts (`edges`: the cut columns, with the piece's sides), the blobs it was joined
    from (`blob_count` of them), and, made on demand (`bent`), the columns between the same
    cuts bent around the ink."""

    piece: Piece
    edges: list[int]
    straight: dict[tuple[int, int], Piece]
    blob_count: int
    by_blobs: dict[tuple[int, int], Piece]

    @classmethod
    def of(cls, piece: Piece, ink: np.ndarray, solid: np.ndarray, height: float,
           grid: bool = True) -> Partitions:
        edges = [0, *sorted(cut_columns(piece, ink, height, grid)), piece.width]
        groups = blobs(piece, solid)
        return cls(piece, edges, parts_between(piece, [np.full(piece.height, e) for e in edges],
                                               height),
                   len(groups), readable_parts(piece, len(groups),
                                               lambda i, j: np.logical_or.reduce(groups[i:j]),
                                               height))

    def bent(self, ink: np.ndarray, height: float) -> dict[tuple[int, int], Piece]:
        if len(self.edges) <= 2:
            return {}
        return parts_between(self.piece, bent_cuts(self.piece, ink, self.edges, height), height)


def split_wide(piece: Piece, ink: np.ndarray, solid: np.ndarray, height: float,
               proba: Proba, whole: Proba | None = None) -> list[Piece]:
    """The piece, or the digits it holds when they touch or nearly touch: of every way to cut
    it at the candidate columns, and of every way to group the blobs it was joined from, the
    one whose parts read best as whole digits (best_partition)."""
    several = may_hold_several(piece, height, solid)
    if not several and (whole is None or is_block(piece)):
        return [piece]
    if whole is not None:
        one = float(whole(field(ink, piece)[None])[0, 1])
        if one >= SURE_WHOLE:
            return [piece]  # most pieces of a row: weighing their cuts would change nothing
        if not several and one >= DOUBTFUL:
            return [piece]  # narrow, and the check does not doubt it
    ways = Partitions.of(piece, ink, solid, height, grid=whole is not None)
    cuts = len(ways.edges) - 1
    best = max(best_partition(ways.straight, cuts, ink, height, proba, whole),
               best_partition(ways.by_blobs, ways.blob_count, ink, height, proba, whole),
               key=lambda scored: scored[0])
    if best[1] and best[2] < UNSURE:
        # touching digits whose columns overlap: no straight cut parts them
        best = max(best, best_partition(ways.bent(ink, height), cuts, ink, height, proba, whole),
                   key=lambda scored: scored[0])
    return best[1] or [piece]


def row_angle(solid: np.ndarray, ruling_angle: float | None = None) -> float:
    """The row's slope in degrees (positive: falling to the right): on a ruled or squared page
    turned by LEVEL to STEEP degrees, the slope of its rulings (`ruling_angle`: a row is written
    along them, and a short row's own slope would be decided by its digits' shapes); else from
    a line fitted through the centre of each column's ink, weighted by its ink; 0 for a row too
    short to tell, or turned by less than LEVEL or more than STEEP."""
    def within(angle: float) -> float:
        return angle if LEVEL <= abs(angle) <= STEEP else 0.0

    if ruling_angle is not None and within(ruling_angle):
        return ruling_angle
    columns = solid.sum(axis=0, dtype=np.float64)
    xs = np.flatnonzero(columns)
    if xs.size < 2:
        return 0.0
    rows = np.arange(solid.shape[0], dtype=np.float64)[:, None]
    centres = (solid * rows).sum(axis=0)[xs] / columns[xs]
    tops, bottoms = solid.argmax(axis=0), solid.shape[0] - solid[::-1].argmax(axis=0)
    if np.ptp(xs) + 1 < LONG_ROW * float(np.median((bottoms - tops)[xs])):
        return 0.0
    weights = columns[xs]
    dx = xs - np.average(xs, weights=weights)
    slope = np.average(dx * (centres - np.average(centres, weights=weights)), weights=weights) \
        / np.average(dx ** 2, weights=weights)
    return within(math.degrees(math.atan(slope)))


def level_row(gray: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """The picture turned by `angle` degrees so that the row runs level (on a canvas large
    enough to hold all of it, filled with the picture's own border), and the 2x3 matrix that
    takes the turned picture's pixels back to the picture's."""
    height, width = gray.shape
    turn = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    cos, sin = abs(turn[0, 0]), abs(turn[0, 1])
    size = (math.ceil(width * cos + height * sin), math.ceil(width * sin + height * cos))
    turn[:, 2] += (size[0] - width) / 2, (size[1] - height) / 2
    level = cv2.warpAffine(gray, turn, size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    return level, cv2.invertAffineTransform(turn)


def image_box(piece: Piece, back: np.ndarray | None, shape: tuple[int, int]) -> list[int]:
    """The piece's box in the picture's pixels (it was found in the levelled picture when
    `back` is given: the box around its turned corners, within the picture)."""
    if back is None:
        return piece.box()
    corners = np.array([[piece.left, piece.top], [piece.right, piece.top],
                        [piece.left, piece.bottom], [piece.right, piece.bottom]], np.float64)
    x, y = (corners @ back[:, :2].T + back[:, 2]).T
    return [max(0, math.floor(x.min())), max(0, math.floor(y.min())),
            min(shape[1], math.ceil(x.max())), min(shape[0], math.ceil(y.max()))]


def level_ink(gray: np.ndarray, source: str = "<image>"
              ) -> tuple[np.ndarray, np.ndarray, bool, np.ndarray | None]:
    """The row's ink (extract_ink: ink, solid, inverted), found in the picture turned level when
    the row slopes, and then the matrix that takes the ink's pixels back to the picture's (None
    when it was not turned)."""
    found = extract_ink(gray, source)
    angle = row_angle(found.solid, found.ruling_angle)
    if angle:  # a sloping row's digits are read upright, and its touching ones cut upright
        level, turned_back = level_row(gray, angle)
        try:
            turned = extract_ink(level, source)
            return turned.ink, turned.solid, turned.inverted, turned_back
        except ImageError:  # the corners filled in took the ink's place: read it as it is
            pass
    return found.ink, found.solid, found.inverted, None


def row_pieces(ink: np.ndarray, solid: np.ndarray, shape: tuple[int, int],  # noqa: PLR0913
               source: str = "<image>", enlarged: float = 1.0) -> tuple[list[Piece], float]:
    """The row's pieces of ink, before the wide ones are split (components, fragments merged,
    dots and dashes dropped), and its digit height. `shape`: the picture's, `enlarged` times
    its own (sizes are judged and told in its own pixels)."""
    pieces = components(ink, solid, source)
    span = max(max(p.bottom for p in pieces) - min(p.top for p in pieces),
               max(p.right for p in pieces) - min(p.left for p in pieces)) / enlarged
    own = (round(shape[0] / enlarged), round(shape[1] / enlarged))
    smallest = smallest_ink(own)
    if span < smallest:
        raise ImageError(f"{source}: ink too small to be digits ({span:.0f} px in a "
                         f"{own[1]}x{own[0]} image, needed: {smallest:.0f} px)")
    height = digit_height([p.height for p in pieces])
    if height / enlarged < MIN_INK_SIDE:  # a line, a 1-pixel-high image: no digit is this flat
        raise ImageError(f"{source}: ink too flat to be digits ({height / enlarged:.0f} px high, "
                         f"needed: {MIN_INK_SIDE} px)")
    pieces = merge_fragments(off_row_dropped(pieces, height), height)
    pieces = [p for p in pieces if p.height >= SMALL * height]
    if len(pieces) > MAX_DIGITS:
        raise ImageError(f"{source}: {len(pieces)} pieces of ink; at most {MAX_DIGITS} digits "
                         "are read")
    return pieces, height


def segment(image: Image.Image | np.ndarray, proba: Proba, source: str = "<image>",  # noqa: PLR0913
            whole: Proba | None = None, enlarge: bool = False
            ) -> tuple[list[Piece], np.ndarray, bool, np.ndarray | None]:
    """The digits' pieces, left to right; the ink (white on black) they cover; whether the
    image was inverted; and, when a sloping row was levelled first or a low picture enlarged
    (`enlarge`), the matrix that takes the ink's pixels back to the image's (image_box). `proba`
    reads 28x28 images, and `whole` (the whole-digit check, when given) tells whether each holds
    one whole digit, to choose where touching digits are cut."""
    gray = as_gray(image, source)
    # a strip this low has no paper above or below its marks (a uniform one has no ink: below)
    if gray.shape[0] < MIN_INK_SIDE and gray.min() != gray.max():
        raise ImageError(f"{source}: image too flat to hold digits ({gray.shape[0]} px high, "
                         f"needed: {MIN_INK_SIDE} px)")
    shape = gray.shape
    # (to at most the pixels a picture is worked on at: a long strip stays as fast to read)
    factor = min(MAX_ENLARGEMENT, ENLARGED_HEIGHT / shape[0],
                 math.sqrt(WORK_PIXELS / (shape[0] * shape[1]))) if enlarge else 1.0
    if factor > 1:
        # a low picture's ink is found and cut enlarged: its few-pixel sizes (the soft edges
        # kept, how near blobs join, whose edge a pixel is) stay small beside its strokes
        gray = cv2.resize(gray, (round(shape[1] * factor), round(shape[0] * factor)),
                          interpolation=cv2.INTER_CUBIC)
    ink, solid, inverted, back = level_ink(gray, source)
    if factor > 1:  # the ink's pixels back to the picture's: levelled back, then shrunk
        shrink = np.array([[shape[1] / gray.shape[1]], [shape[0] / gray.shape[0]]])
        back = (np.eye(2, 3) if back is None else back) * shrink
    pieces, height = row_pieces(ink, solid, gray.shape, source, factor)
    found: list[Piece] = []
    for piece in pieces:
        found.extend(split_wide(piece, ink, solid, height, proba, whole))
        if len(found) > MAX_DIGITS:
            raise ImageError(f"{source}: more than {MAX_DIGITS} digits; at most {MAX_DIGITS} "
                             "are read")
    return sorted(found, key=lambda p: (p.left + p.right)), ink, inverted, back


# --------------------------------------------------------------------------------------------
# Reading


def read_number(image: Image.Image | np.ndarray, models: Sequence[nn.Module],  # noqa: PLR0913
                classes: Sequence[str], runtime: Runtime = CPU, top_k: int = 3,
                source: str = "<image>", scale: float = 1.0,
                digit_threshold: float | None = None,
                whole_digit: nn.Module | bool = True) -> NumberReading:
    """Read the row of digits in `image`. Boxes are multiplied by `scale` (for an image that was
    shrunk before reading: boxes in the original's pixels). A piece whose best probability is
    under `digit_threshold` is marked as no digit (novelty.py). `whole_digit`: the whole-digit
    check that helps choose where touching digits are cut (True: the one shipped with
    mnist-cnn; False: none, the digit network alone chooses)."""
    def proba(images: torch.Tensor) -> torch.Tensor:
        return ensemble_proba(models, images, runtime=runtime)

    check = load_whole_digit() if whole_digit is True else None if whole_digit is False \
        else whole_digit
    # small, so read on the CPU, where it was loaded
    whole = None if check is None else functools.partial(ensemble_proba, [check])

    # where to cut touching digits is decided on softened calibrated probabilities: the
    # calibrated ones are so sharp that the halves of one digit read as two sure digits, and the
    # shipped network's raw ones so flat on a photo that no cut looks better than none
    cutting = [Calibrated(m.network, CUT_SOFTENING * m.temperature) if isinstance(m, Calibrated)
               else m for m in models]

    def cut_proba(images: torch.Tensor) -> torch.Tensor:
        return ensemble_proba(cutting, images, runtime=runtime)

    pieces, ink, inverted, back = segment(image, cut_proba, source, whole, enlarge=True)
    shape = (image.height, image.width) if isinstance(image, Image.Image) else image.shape[:2]
    probabilities = proba(torch.stack([field(ink, p) for p in pieces]))
    digits: list[dict[str, Any]] = []
    sides = [max(piece.height, piece.width) for piece in pieces]
    looks_like_digits = [digit and not is_block(piece) for digit, piece in
                         zip(is_digit(probabilities, digit_threshold, sides).tolist(), pieces)]
    for piece, p, looks_like_digit in zip(pieces, probabilities, looks_like_digits):
        best = int(p.argmax())
        digits.append({
            "digit": classes[best],
            "index": best,
            "probability": float(p[best]),
            "is_digit": looks_like_digit,
            "box": [round(v * scale) for v in image_box(piece, back, shape)],
            "top_k": ranked(p, classes, top_k),
        })
    return NumberReading("".join(d["digit"] for d in digits), digits, inverted,
                         all(looks_like_digits))
