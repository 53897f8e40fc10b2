"""Training data for the number reader's whole-digit check: the parts the reader weighs, labelled.

A row of two to four digits, many of them touching or overlapping, is photographed on a notebook
page (images/notebook.py); its ink is found and cut into pieces as `read_number` finds and cuts it
(inference/numbers.py: straight cuts, blobs and bent cuts, every part between two cuts), and each
part is brought into the MNIST field as the reader brings it. Whose ink each pixel is stays known:
every digit is also photographed alone, with the same random draws (the same page, light and
camera), so a part is labelled by the share of each digit's ink it holds: "one whole digit" when it
holds nearly all of one digit and little of any other, "not one whole digit" when it holds a
fragment, or much of two. Parts in between are left out, as nothing a label could be sure of.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..images.notebook import Condition, photograph_page
from ..images.preprocess import ImageError, as_gray, ink_box
from ..images.synthetic import compose_layers
from ..inference.numbers import Partitions, field, level_ink, may_hold_several, row_pieces

WHOLE, OTHER = 0.85, 0.15  # one whole digit: this share of one digit's ink, under OTHER of others'
FRAGMENT, PAIR = 0.6, 0.35  # not one: under FRAGMENT of every digit, or PAIR of a second one's
TOUCHING = 0.5  # the share of neighbours that touch or overlap (compose_layers)
OVERLAP = (-0.2, 0.03)  # ... by up to a fifth of the height (or nearly touch)
DARKER = 12  # gray levels a digit darkens a pixel by in its own photo, for the pixel to be its
# 1s are drawn twice as often as each other digit: a narrow 1 cut off its neighbour looks like a
# sliver of a 0 or a 4, which are many more among the parts; with too few whole 1s to learn from,
# the check called them fragments and the reader kept "10" or "16" as one digit
ONES = 2.0
DIGIT_SHARES = np.array([ONES if d == 1 else 1.0 for d in range(10)]) / (9 + ONES)

Draw = Callable[[int, np.random.Generator], np.ndarray]  # digit, rng -> white-on-black glyph


def photographed_row(draw: Draw, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray, int]:
    """A photo of a row of 2 to 4 digits (grayscale), whose ink each pixel is (0: none, k: the
    k-th digit's), and how many digits."""
    digits = rng.choice(10, int(rng.integers(2, 5)), p=DIGIT_SHARES)
    layers, _ = compose_layers([draw(int(d), rng) for d in digits], rng, height=96,
                               touching=TOUCHING, overlap=OVERLAP)
    rows, cols = ink_box(layers.max(axis=0)) or (slice(None), slice(None))
    layers = layers[:, rows, cols]
    condition = Condition(desk=False, tilt=float(rng.normal(0, 1.5)),
                          height=int(np.exp(rng.uniform(np.log(60), np.log(400)))),
                          digit_share=float(rng.uniform(0.3, 0.7)))
    start = rng.bit_generator.state
    photo = as_gray(photograph_page(layers.max(axis=0), rng, condition))
    after = rng.bit_generator.state
    alone = []
    for ink in [np.zeros_like(layers[0]), *layers]:  # the blank page, then each digit alone
        rng.bit_generator.state = start
        alone.append(as_gray(photograph_page(ink, rng, condition)).astype(np.int16))
    rng.bit_generator.state = after
    darker = np.stack([alone[0] - a for a in alone[1:]])
    owner = np.where(darker.max(axis=0) > DARKER, darker.argmax(axis=0) + 1, 0)
    return photo, owner, len(digits)


def label(shares: np.ndarray) -> int | None:
    """1: one whole digit, 0: not one, None: neither surely (`shares`: of each digit's ink)."""
    top = np.sort(shares)[::-1]
    second = top[1] if len(top) > 1 else 0.0
    if top[0] >= WHOLE and second < OTHER:
        return 1
    if top[0] < FRAGMENT or second >= PAIR:
        return 0
    return None


def row_parts(photo: np.ndarray, owner: np.ndarray, count: int
              ) -> tuple[list[np.ndarray], list[int]]:
    """The labelled parts of one photographed row, as 28x28 fields (none for a row the reader
    would turn level first: its owners are not turned with it)."""
    try:
        ink, solid, _, back = level_ink(photo)
        if back is not None:
            return [], []
        pieces, height = row_pieces(ink, solid, photo.shape)
    except ImageError:
        return [], []
    total = np.bincount(owner[solid], minlength=count + 1)[1:]
    fields, labels = [], []
    for piece in pieces:
        parts = [piece]
        if may_hold_several(piece, height, solid):
            ways = Partitions.of(piece, ink, solid, height)
            parts += [*ways.straight.values(), *ways.by_blobs.values(),
                      *ways.bent(ink, height).values()]
        # each way to cut a piece holds the piece itself, and may find a part another found:
        # each part is learnt from once
        distinct = {(p.top, p.left, p.mask.shape, p.mask.tobytes()): p for p in parts}
        for part in distinct.values():
            window = (slice(part.top, part.bottom), slice(part.left, part.right))
            held = owner[window][part.mask & solid[window]]
            y = label(np.bincount(held, minlength=count + 1)[1:] / np.maximum(total, 1))
            if y is not None:
                fields.append(field(ink, part)[0].numpy())
                labels.append(y)
    return fields, labels


def part_fields(draw: Draw, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The labelled parts of `rows` photographed rows of digits drawn by `draw`: uint8 fields
    (N, 28, 28) and labels (N,): 1 for one whole digit, 0 for not one."""
    rng = np.random.default_rng(seed)
    fields: list[np.ndarray] = []
    labels: list[int] = []
    for _ in range(rows):
        f, y = row_parts(*photographed_row(draw, rng))
        fields += f
        labels += y
    return (np.stack(fields) if fields else np.zeros((0, 28, 28), np.uint8),
            np.array(labels, np.int64))
