"""mnist_cnn.training.parts: the whole-digit check's training parts, labelled by whose ink they hold."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mnist_cnn.images import pen
from mnist_cnn.training.parts import label, part_fields, photographed_row


def draw(digit: int, rng: np.random.Generator) -> np.ndarray:
    return pen.draw(str(digit), rng)


@pytest.mark.parametrize(("shares", "expected"), [
    ([0.97, 0.02], 1),        # one digit, and a few edge pixels of its neighbour
    ([1.0], 1),
    ([0.9, 0.5], 0),          # two digits touching, read as one piece
    ([0.45, 0.0, 0.0], 0),    # half of a digit
    ([0.75, 0.05], None),     # most of a digit: neither surely
    ([0.9, 0.2, 0.0], None),
])
def test_a_part_is_one_whole_digit_only_when_it_holds_nearly_all_of_one(shares, expected):
    assert label(np.array(shares)) == expected


def test_every_digit_of_a_photographed_row_owns_its_own_ink():
    for seed in range(3):
        photo, owner, count = photographed_row(draw, np.random.default_rng(seed))
        assert owner.shape == photo.shape and 2 <= count <= 4
        assert set(np.unique(owner)) == set(range(count + 1))  # each digit, and the paper
        # each digit's pixels are where the photo shows its ink: darker than the paper around
        for k in range(1, count + 1):
            own = owner == k
            ring = ndimage.binary_dilation(own, iterations=3) & (owner == 0)
            assert photo[own].mean() < photo[ring].mean() - 20


def test_parts_come_labelled_both_ways_and_the_same_for_a_seed():
    fields, labels = part_fields(draw, 4, seed=1)
    assert fields.dtype == np.uint8 and fields.shape == (len(labels), 28, 28)
    assert set(labels.tolist()) == {0, 1}
    again, same = part_fields(draw, 4, seed=1)
    assert np.array_equal(fields, again) and np.array_equal(labels, same)
