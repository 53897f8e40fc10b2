"""Phone photos of handwriting on notebook paper, read by the shipped network through predict's
path (a JPEG file, decoded, preprocessed): one test per condition that broke the reading
before (a ruled or squared page, a shadow's edge, pencil, a tiny photo, a marker, a dark desk,
a number on a ruled page), and the rule that visible ink is never refused as blank."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from mnist_cnn.images import pen
from mnist_cnn.images.notebook import Condition, _desk, jpeg_bytes, photograph_page, row_ink
from mnist_cnn.images.preprocess import (
    ImageError,
    as_gray,
    extract_ink,
    light_paper,
    load_and_preprocess,
    load_image,
    preprocess,
    to_tensor,
)
from mnist_cnn.images.synthetic import compose_row, crop_ink, font_paths, render_glyph, written_glyph
from mnist_cnn.inference.ensemble import ensemble_proba
from mnist_cnn.inference.numbers import read_number, row_angle
from mnist_cnn.inference.predict import Predictor, load_predictor
from mnist_cnn.models.checkpoint import pretrained_path
from mnist_cnn.opencv import cv2

PHOTOS = 10  # per condition; a test passes with at most one misread
LEGIBLE = 12  # px: a smaller digit with hairline strokes is more guessed at than read
# px: images of at least this side (thumbnails of 20 px with lighting ramps of 30 gray levels
# across them can still be refused: the paper cannot be told from the ink at that size)
SMALLEST = 32
# of 30 pen letters photographed from afar: the shipped network refuses 27, the one before it 23
# (21 and 22 with other seeds), an earlier one trained without photos from afar 17 (15, 14)
FAR_LETTERS_REFUSED = 20
# of 120 photos of printed 0s, 6s and 9s in hairline ink: the shipped network reads 113 right, the
# one before it 115, an earlier one trained on no font digits 107 (with other seeds 112-118
# against 106-114, for those two)
PRINTED_READ = 111


@pytest.fixture(scope="module")
def shipped():
    return load_predictor([pretrained_path()])


def read(photos: list[np.ndarray], shipped) -> list[int]:
    models, _, _ = shipped
    fields = [to_tensor(load_and_preprocess(jpeg_bytes(p)).final) for p in photos]
    import torch

    return ensemble_proba(models, torch.stack(fields)).argmax(1).tolist()


def photos_of(condition: Condition, seed: int) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    labels = [d % 10 for d in range(seed, seed + PHOTOS)]
    photos = [photograph_page(pen.draw(str(d), rng), rng, condition) for d in labels]
    return photos, labels


CONDITIONS = {
    "ruled paper": Condition(paper="ruled", pen="blue", stroke=0.1, shadow=False, desk=False,
                             tilt=2.0, height=120, digit_share=0.5),
    "squared paper": Condition(paper="squared", pen="blue", stroke=0.1, shadow=False,
                               desk=False, tilt=-2.0, height=90, digit_share=0.55),
    "a shadow's edge": Condition(paper="plain", pen="black", stroke=0.1, shadow=True,
                                 desk=False, tilt=0.0, height=160, digit_share=0.5),
    "pencil": Condition(paper="ruled", pen="pencil", stroke=0.08, shadow=False, desk=False,
                        tilt=0.0, height=140, digit_share=0.5),
    "a 20x30 photo": Condition(paper="plain", pen="black", stroke=0.12, shadow=False, desk=False,
                               tilt=0.0, height=30, digit_share=0.7),
    "a thick marker": Condition(paper="plain", pen="marker", stroke=0.24, shadow=False,
                                desk=False, tilt=0.0, height=200, digit_share=0.6),
    "a dark desk beside the page": Condition(paper="plain", pen="blue", stroke=0.1,
                                             shadow=False, desk=True, tilt=3.0, height=150,
                                             digit_share=0.45),
}


@pytest.mark.parametrize("name", CONDITIONS)
def test_photos_of_handwriting_are_read(name, shipped):
    photos, labels = photos_of(CONDITIONS[name], seed=len(name))
    answers = read(photos, shipped)
    right = sum(a == y for a, y in zip(answers, labels))
    assert right >= PHOTOS - 1, f"{name}: read {answers}, written {labels}"


def test_printed_zeros_sixes_and_nines_in_thin_ink_are_read(shipped):
    # print closes a 6's loop and opens a 9's as MNIST's writers seldom do: a network trained on
    # no font digits read 6s as 0s and 0s as 1s here (PRINTED_READ)
    rng = np.random.default_rng(2)
    fonts = font_paths()[0::3]  # the calibration third: never trained on
    labels = [d for d in (0, 6, 9) for _ in range(40)]
    thin = Condition(paper="plain", pen="black", stroke=0.04, shadow=False, desk=False, tilt=0.0,
                     height=120, digit_share=0.5)
    photos = [photograph_page(written_glyph(str(d), fonts[rng.integers(len(fonts))], rng), rng,
                              thin) for d in labels]
    answers = read(photos, shipped)
    right = sum(a == y for a, y in zip(answers, labels))
    assert right >= PRINTED_READ, f"{right} of {len(labels)} read right: {answers}"


def test_a_number_on_ruled_paper_is_read(shipped):
    models, classes, threshold = shipped
    rng = np.random.default_rng(5)
    exact = 0
    numbers = ["307", "4815", "62", "95"]
    for number in numbers:
        ink = row_ink([pen.draw(d, rng) for d in number], rng)
        photo = photograph_page(ink, rng, Condition(paper="ruled", pen="blue", stroke=0.1,
                                                    shadow=False, desk=False, tilt=1.0,
                                                    height=160, digit_share=0.5))
        reading = read_number(load_image(jpeg_bytes(photo)), models, classes,
                              digit_threshold=threshold)
        exact += reading.number == number
    assert exact >= len(numbers) - 1


def test_numbers_in_low_photos_are_read(shipped):
    # rows of four digits in photos 30-70 px tall: their ink is found and cut in the picture
    # enlarged, where a few pixels' soft edge or join is small beside the strokes (95 of these
    # 120 read exactly; 86 when found at the photo's own size)
    models, classes, threshold = shipped
    exact = 0
    for paper, low, high in (("plain", 40, 70), ("squared", 40, 70), ("ruled", 30, 45)):
        rng = np.random.default_rng(7)
        for _ in range(40):
            number = "".join(str(d) for d in rng.integers(0, 10, 4))
            ink = row_ink([pen.draw(d, rng) for d in number], rng)
            photo = photograph_page(ink, rng, Condition(
                paper=paper, pen="blue", shadow=False, desk=False, tilt=0.0,
                height=int(rng.integers(low, high)), digit_share=0.5))
            try:
                exact += read_number(load_image(jpeg_bytes(photo)), models, classes,
                                     digit_threshold=threshold).number == number
            except ImageError:
                pass
    assert exact >= 90, f"{exact} of 120 numbers in low photos read exactly"


@pytest.mark.parametrize("tilt", [0.0, 9.0])
def test_boxes_of_a_low_photos_digits_are_in_its_own_pixels(shipped, tilt):
    # the photo is read enlarged (and levelled, when turned); its boxes are told in its pixels:
    # they match those read from a copy the test enlarges beyond the reader's own enlargement,
    # within a few pixels of soft edge (boxes in the enlarged pixels would be off by dozens)
    models, classes, threshold = shipped
    rng = np.random.default_rng(4)
    ink = row_ink([pen.draw(d, rng) for d in "4817"], rng)
    image = load_image(jpeg_bytes(photograph_page(ink, rng, Condition(
        paper="plain", shadow=False, desk=False, tilt=tilt, height=70, digit_share=0.5))))
    low = read_number(image, models, classes, digit_threshold=threshold)
    big = image.resize((image.width * 3, image.height * 3), Image.Resampling.BICUBIC)
    high = read_number(big, models, classes, digit_threshold=threshold)
    assert low.number == high.number == "4817"
    for small, large in zip(low.digits, high.digits):
        assert np.abs(np.array(small["box"]) - np.array(large["box"]) / 3).max() <= 4


@pytest.mark.parametrize("shortest, longest, photos, allowed", [
    # a shadow's hard edge lengthens both tails of the flattened histogram; the side most pixels
    # are on alone (the shadowed one, often) gave 4 of these 200 photos the wrong colour
    (3, 3, 200, 1),
    # a row of 4-6 digits makes a wide, low picture: a lighting blur as wide as a square
    # picture's mixed the shadow's band with the lit paper (7 of these 400 photos got the wrong
    # colour; 1 with the blur scaled to the picture's area)
    (4, 6, 400, 2),
])
def test_shadowed_rows_keep_dark_ink_on_light_paper(shortest, longest, photos, allowed):
    wrong = []
    for seed in range(photos):
        rng = np.random.default_rng(seed)
        length = shortest if shortest == longest else int(rng.integers(shortest, longest + 1))
        number = "".join(str(d) for d in rng.integers(0, 10, length))
        ink = row_ink([pen.draw(d, rng) for d in number], rng)
        photo = photograph_page(ink, rng, Condition(
            paper="plain", pen="black", stroke=0.1, shadow=True, desk=False, tilt=0.0,
            height=int(rng.integers(40, 200)), digit_share=0.5))
        if not light_paper(as_gray(load_image(jpeg_bytes(photo)))):
            wrong.append(seed)
    assert len(wrong) <= allowed, f"light ink found on the photos of seeds {wrong}"


@settings(max_examples=150, deadline=None)
# a small light digit in the corner of a dark page lit unevenly (refused before: the page's
# ramp down to black was taken for the ink's tail, and the page for light paper)
@example(digit="2", font=5, paper=6, contrast=40, size=346, share=0.0625, aspect=0.5,
         where=(0.0, 0.0), noise=0.0, gradient=12.0, seed=0)
@example(digit="3", font=10, paper=5, contrast=40, size=370, share=0.0625, aspect=0.5,
         where=(0.0, 0.0), noise=0.0, gradient=11.0, seed=0)
@given(digit=st.sampled_from("0123456789"), font=st.integers(0, 100),
       paper=st.integers(0, 255), contrast=st.integers(40, 255),
       size=st.integers(SMALLEST, 400), share=st.floats(0.04, 0.9), aspect=st.floats(0.5, 2.0),
       where=st.tuples(st.floats(0, 1), st.floats(0, 1)), noise=st.floats(0, 4),
       gradient=st.floats(-40, 40), seed=st.integers(0, 2**16))
def test_visible_ink_is_never_refused_as_blank(digit, font, paper, contrast, size, share, aspect,
                                               where, noise, gradient, seed):
    """Ink at least 40 gray levels from the paper around it, at least 4% of the image's shorter
    side (and LEGIBLE px) tall, in an image at least SMALLEST px wide and tall, on any paper,
    light or dark, unevenly lit and grainy, anywhere in the image (not cut by its border): read,
    never refused as blank."""
    import cv2

    fonts = font_paths()
    glyph = render_glyph(digit, fonts[font % len(fonts)], 64)
    height, width = size, max(SMALLEST, round(size * aspect))
    tall = max(LEGIBLE, math.ceil(share * min(height, width)))
    scale = min(tall / glyph.shape[0], 0.95 * width / glyph.shape[1],
                0.95 * height / glyph.shape[0])
    ink = cv2.resize(glyph, (max(1, round(glyph.shape[1] * scale)),
                             max(1, round(glyph.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    # the paper lit unevenly (a ramp across the image), the ink `contrast` darker or lighter
    ramp = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :] * gradient
    light = np.clip(paper + ramp + np.zeros((height, 1), np.float32), 0, 255)
    darker = paper - contrast >= 0
    ink_level = light - contrast if darker else light + contrast
    if not (0 <= ink_level.min() and ink_level.max() <= 255):
        return  # no such contrast exists from this paper's level
    alpha = np.zeros((height, width), np.float32)
    top = 1 + round(where[0] * (height - ink.shape[0] - 2))
    left = 1 + round(where[1] * (width - ink.shape[1] - 2))
    alpha[top:top + ink.shape[0], left:left + ink.shape[1]] = ink / float(ink.max())  # its core
    image = light * (1 - alpha) + ink_level * alpha
    image += np.random.default_rng(seed).normal(0, noise, image.shape)
    preprocess(np.clip(np.rint(image), 0, 255).astype(np.uint8))  # raises ImageError if refused


def rows_read_exactly(shipped, ink_of, count: int, length: int, seed: int, colour: str) -> int:
    """How many of `count` photographed rows of `length` random pen digits are read exactly;
    `ink_of(digits, rng)` draws a row's ink (white on black) from its digits' glyphs."""
    models, classes, threshold = shipped
    rng = np.random.default_rng(seed)
    exact = 0
    for _ in range(count):
        number = "".join(str(d) for d in rng.integers(0, 10, length))
        photo = photograph_page(ink_of([pen.draw(d, rng) for d in number], rng), rng, Condition(
            paper="plain", pen=colour, stroke=0.1, shadow=False, desk=False, tilt=0.0,
            height=200, digit_share=0.5))
        reading = read_number(load_image(jpeg_bytes(photo)), models, classes,
                              digit_threshold=threshold)
        exact += reading.number == number
    return exact


def test_touching_digits_on_a_page_are_cut_apart(shipped):
    # rows of three handwritten digits that all touch their neighbours, photographed: the cuts
    # are weighed together, on softened calibrated probabilities (27 of 40 read exactly; 23 when
    # each cut was chosen on its own, 10 when on the raw probabilities)
    from mnist_cnn.images.synthetic import compose_row, crop_ink

    def touching(glyphs, rng):
        return crop_ink(255 - compose_row(glyphs, rng, height=96, touching=1.0)[0])

    exact = rows_read_exactly(shipped, touching, 40, 3, seed=1, colour="black")
    assert exact >= 24, f"{exact} of 40 rows of touching digits read exactly"


def test_an_underlined_number_is_read(shipped):
    # a line drawn under the digits, wider than any of them: it is no 5's bar to merge with the
    # digit above it (8 of 10 read exactly; 2 when it was merged)
    def underlined(glyphs, rng):
        ink = row_ink(glyphs, rng)
        height, width = ink.shape
        ink = np.pad(ink, ((0, height // 3), (0, 0)))
        ink[height + height // 6:height + height // 6 + max(2, height // 14),
            width // 10:9 * width // 10] = 255
        return ink

    exact = rows_read_exactly(shipped, underlined, 10, 5, seed=3, colour="blue")
    assert exact >= 6, f"{exact} of 10 underlined numbers read exactly"


def test_a_mark_below_the_number_is_no_digit_of_it(shipped):
    # a short stroke wholly below the row, near one end (a tick, the end of a desk's edge, a
    # grid's stub), was read as a 1 beside the digits or merged into the digit above it (4 of
    # these 10 read exactly; 10 once marks off the row are dropped)
    def with_a_mark_below(glyphs, rng):
        ink = row_ink(glyphs, rng)
        height, width = ink.shape
        ink = np.pad(ink, ((0, 3 * height // 4), (0, 0)))
        mark = max(2, height // 12)
        left = int(rng.choice([rng.integers(0, width // 6),
                               rng.integers(5 * width // 6, width - mark)]))
        ink[height + 2 * height // 5:height + 3 * height // 4, left:left + mark] = 255
        return ink

    exact = rows_read_exactly(shipped, with_a_mark_below, 10, 3, seed=4, colour="blue")
    assert exact >= 8, f"{exact} of 10 numbers with a mark below them read exactly"


def test_a_desk_in_a_corner_is_not_taken_for_ink(shipped):
    # a dark desk beside a tilted page, its edge ragged with the paper's grain where the paper's
    # level follows the desk, ruled lines running into it: the wedge is dropped with its rim
    # (58 of 60 read; 51 when a wedge joined to specks along the border or to the lines was kept
    # as ink and read instead of the digit)
    photos, labels = [], []
    for seed in range(240, 300):
        rng = np.random.default_rng(seed)
        labels.append(seed % 10)
        condition = Condition(paper=str(rng.choice(["plain", "ruled"])), pen="blue",
                              stroke=float(rng.uniform(0.07, 0.14)), shadow=False, desk=True,
                              tilt=float(rng.normal(0, 3)), height=int(rng.integers(100, 300)),
                              digit_share=float(rng.uniform(0.3, 0.6)))
        photos.append(photograph_page(pen.draw(str(labels[-1]), rng), rng, condition))
    right = sum(a == y for a, y in zip(read(photos, shipped), labels))
    assert right >= 56, f"{right} of 60 photos beside a desk read right"


def test_letters_photographed_from_afar_are_refused(shipped):
    # a pen letter 5% of a 2,000 px photo, blurred as a camera blurs a photo that size: shrunk
    # for reading, it is as round as a digit. The network is trained on font letters and digits
    # blurred so; pen letters are never trained on
    models, _, threshold = shipped
    rng = np.random.default_rng(0)
    photos = [photograph_page(pen.draw(letter, rng), rng, Condition(
        paper="plain", pen=str(rng.choice(["black", "blue"])),
        stroke=float(rng.uniform(0.07, 0.14)), shadow=False, desk=False,
        tilt=float(rng.normal(0, 2)), height=2000, digit_share=0.05))
        for letter in pen.LETTERS * 2]
    import torch

    fields = torch.stack([to_tensor(load_and_preprocess(jpeg_bytes(p)).final) for p in photos])
    sure = ensemble_proba(models, fields).max(1).values
    refused = int((sure < threshold).sum())
    assert refused >= FAR_LETTERS_REFUSED, f"{refused} of {len(photos)} letters refused: {sure}"


# of 60 pen letters in photos 24-59 px tall, predict refuses 59 as not a digit and accepts and
# reads 57 of the 60 digits beside them right. With the network shipped before: 56 refused, and
# 48 by the threshold alone, before small ink had to be surer (53-57 against 48-54 with seeds
# 3-8); 58 digits read either way (57-60 with those seeds)
SMALL_LETTERS_REFUSED = 53
SMALL_DIGITS_READ = 55


def test_letters_in_small_photos_are_refused_and_digits_read():
    predictor = Predictor.load([pretrained_path()])
    rng = np.random.default_rng(4)
    refused = right = 0
    for _ in range(60):
        for text in (str(rng.choice(list(pen.LETTERS))), str(rng.integers(10))):
            photo = photograph_page(pen.draw(text, rng), rng, Condition(
                paper="plain", pen="black", stroke=0.1, shadow=False, desk=False,
                height=int(rng.integers(24, 60))))
            top, _, _ = predictor.read_digit(jpeg_bytes(photo))
            if text.isdigit():
                right += top["is_digit"] and top["digit"] == text
            else:
                refused += not top["is_digit"]
    assert refused >= SMALL_LETTERS_REFUSED, f"{refused} of 60 small letters refused"
    assert right >= SMALL_DIGITS_READ, f"{right} of 60 small digits accepted and read right"


def test_a_photo_from_afar_is_blurred_by_a_share_of_the_digit():
    # Condition.blur: the camera's blur in digit heights, whatever the photo's size
    def sharpness(blur: float) -> float:
        rng = np.random.default_rng(4)
        photo = photograph_page(pen.draw("8", rng), rng, Condition(
            paper="plain", pen="black", stroke=0.1, shadow=False, desk=False, tilt=0.0,
            height=300, digit_share=0.5, blur=blur))
        return float(np.abs(np.diff(photo.mean(axis=2), axis=1)).max())

    assert sharpness(0.005) > 2 * sharpness(0.05)


# of 30 rows of 4-6 pen digits in thick strokes on a page turned by 10-15 degrees: read exactly
# 23 with the row levelled first, 17 without (their touching digits cut upright)
TILTED_ROWS_READ = 20


def test_a_number_on_a_tilted_page_is_read(shipped):
    models, classes, threshold = shipped
    rng = np.random.default_rng(8)
    exact = 0
    for _ in range(30):
        number = "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(4, 7))))
        ink = row_ink([pen.draw(d, rng) for d in number], rng)
        photo = photograph_page(ink, rng, Condition(
            paper="plain", pen="black", stroke=0.16, shadow=False, desk=False,
            tilt=float(rng.choice([-1, 1]) * rng.uniform(10, 15)), height=240, digit_share=0.4))
        reading = read_number(load_image(jpeg_bytes(photo)), models, classes,
                              digit_threshold=threshold)
        exact += reading.number == number
    assert exact >= TILTED_ROWS_READ, f"{exact} of 30 tilted rows read"


@pytest.mark.parametrize("paper", ["ruled", "squared", "plain"])
def test_a_short_number_on_a_turned_page_is_levelled_along_the_rulings(paper):
    # Two touching digits are too short a row for their own slope to tell (the digits' shapes
    # would decide the fit); a page's rulings tell how it is turned, and the row runs along them
    rng = np.random.default_rng(11)
    for _ in range(8):
        row, _ = compose_row([pen.draw(str(d), rng) for d in rng.integers(0, 10, 2)], rng,
                             height=96, touching=1.0)
        tilt = float(rng.choice([-1, 1]) * rng.uniform(10, 15))
        photo = photograph_page(crop_ink(255 - row), rng, Condition(
            paper=paper, pen="blue", stroke=0.12, shadow=False, desk=False, tilt=tilt, height=240,
            digit_share=0.45))
        found = extract_ink(as_gray(load_image(jpeg_bytes(photo))))
        angle = row_angle(found.solid, found.ruling_angle)
        if paper == "plain":  # nothing to go by: read as it is
            assert found.ruling_angle is None and angle == 0.0
        else:  # (the photo's perspective turns the rulings by up to a few degrees more or less)
            assert found.ruling_angle == pytest.approx(-tilt, abs=3.0)
            assert angle == found.ruling_angle


def test_a_stroke_fading_beside_a_dark_digit_is_kept_whole():
    # a dark ring beside a bar that fades from dark to light along its length (a pen running
    # dry): the bar is ink wherever it is half as dark as its own darkest, not only near the
    # pixels that pass one split made for the whole picture (which left its dark end alone)
    gray = np.full((120, 200), 230, np.uint8)
    cv2.circle(gray, (55, 60), 28, 20, 9)
    for row in range(20, 100):
        gray[row, 140:148] = round(40 + 130 * (row - 20) / 80)  # contrast 190 down to 60
    solid = extract_ink(gray).solid
    rows = np.flatnonzero(solid[:, 130:160].any(axis=1))
    assert rows.size and rows.max() - rows.min() >= 0.75 * 80, \
        f"the fading bar is ink over rows {rows.min() if rows.size else None}-" \
        f"{rows.max() if rows.size else None} of 20-100"


def test_the_desk_keeps_off_the_writing():
    rng = np.random.default_rng(0)
    written = np.zeros((300, 400), np.float32)
    written[100:200, 60:340] = 1.0
    for _ in range(50):
        page = _desk(written.shape, written, rng)
        assert page is None or page[written > 0].min() > 0.99
    everywhere = np.ones((300, 400), np.float32)
    assert _desk(everywhere.shape, everywhere, rng) is None
