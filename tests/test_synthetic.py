"""mnist_cnn.images.synthetic: glyphs, non-digits and rows of digits, the same for the same seed."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_cnn.images.synthetic import (
    NOT_DIGIT_LETTERS,
    SHAPES,
    compose_layers,
    compose_row,
    crop_ink,
    font_paths,
    font_row,
    mnist_row,
    render_glyph,
    scribble,
    shape,
)


def test_fonts_are_found_in_a_fixed_order():
    paths = font_paths()
    assert paths, "matplotlib ships DejaVu fonts"
    assert paths == font_paths()
    assert all(p.is_file() for p in paths)


def test_render_glyph_is_white_ink_cropped_to_it():
    glyph = render_glyph("7", font_paths()[0], height=64)
    assert glyph.dtype == np.uint8
    assert glyph.max() == 255
    assert glyph[0].any() and glyph[-1].any() and glyph[:, 0].any() and glyph[:, -1].any()
    assert 30 < glyph.shape[0] <= 70


def test_crop_ink_keeps_an_empty_image_whole():
    blank = np.zeros((5, 7), dtype=np.uint8)
    assert crop_ink(blank).shape == (5, 7)
    image = blank.copy()
    image[1:3, 2:5] = 200
    assert crop_ink(image).shape == (2, 3)


@pytest.mark.parametrize("kind", SHAPES)
def test_every_shape_draws_ink_deterministically(kind):
    a = shape(kind, np.random.default_rng(3))
    b = shape(kind, np.random.default_rng(3))
    assert a.shape == (80, 80) and a.dtype  # size 64 and a margin of 8 == np.uint8
    assert a.any()
    assert np.array_equal(a, b)


def test_scribble_depends_on_the_seed():
    assert not np.array_equal(scribble(np.random.default_rng(0)), scribble(np.random.default_rng(1)))


def test_not_digit_letters_hold_no_digit_lookalikes():
    assert not set(NOT_DIGIT_LETTERS) & set("OolISsZzBgqbGJ0123456789")


def test_compose_row_boxes_hold_each_glyph_on_light_paper():
    glyphs = [np.full((20, 10), 255, dtype=np.uint8) for _ in range(3)]
    row, boxes = compose_row(glyphs, np.random.default_rng(0), height=40, touching=0.0)
    assert row.dtype == np.uint8
    assert row[0, 0] == 255  # paper
    assert len(boxes) == 3
    lefts = [b[0] for b in boxes]
    assert lefts == sorted(lefts)
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= row.shape[1] and 0 <= top < bottom <= row.shape[0]
        assert (row[top:bottom, left:right] == 0).any()  # dark ink inside its box


def test_compose_layers_keep_each_glyph_apart_where_they_overlap():
    glyphs = [np.full((20, 10), 255, dtype=np.uint8) for _ in range(3)]
    layers, boxes = compose_layers(glyphs, np.random.default_rng(0), height=40, touching=1.0,
                                   overlap=(-0.2, -0.1))
    row, same_boxes = compose_row(glyphs, np.random.default_rng(0), height=40, touching=1.0)
    assert layers.shape[0] == 3 and boxes[0] == same_boxes[0]
    for layer, (left, top, right, bottom) in zip(layers, boxes):
        inside = np.zeros(layer.shape, bool)
        inside[top:bottom, left:right] = True
        assert layer[inside].min() == 255 and layer[~inside].max() == 0  # its own glyph only
    assert boxes[1][0] < boxes[0][2]  # the glyphs overlap, and no layer holds another's ink
    # compose_row is the layers' ink together, for the same draws
    layers, _ = compose_layers(glyphs, np.random.default_rng(0), height=40, touching=1.0)
    assert np.array_equal(row, 255 - layers.max(axis=0))


def test_mnist_row_and_font_row_say_their_digits():
    rng = np.random.default_rng(0)
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    images[:, 8:20, 12:16] = 255
    labels = np.array([4, 5, 6])
    row, text = mnist_row(images, labels, 4, rng)
    assert len(text) == 4 and set(text) <= {"4", "5", "6"}
    assert row.ndim == 2
    row, text = font_row(3, np.random.default_rng(1))
    assert len(text) == 3 and text.isdigit()
    assert (row < 128).any()
