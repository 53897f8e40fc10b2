"""Photos of digits (synthetic, made here) -> the MNIST convention; bad input -> ImageError."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from mnist_cnn.errors import MnistCnnError
from mnist_cnn.images.preprocess import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    ImageError,
    Preprocessed,
    TooManyPixels,
    collect_images,
    extract_ink,
    load_and_preprocess,
    load_image,
    mnist_field,
    otsu_threshold,
    preprocess,
    to_tensor,
)

WHITE, BLACK = (255, 255, 255), (0, 0, 0)
BLUE_INK, CREAM = (30, 40, 160), (245, 235, 210)


def find_font() -> str | None:
    for folder in ("/usr/share/fonts", "/usr/local/share/fonts", "/Library/Fonts"):
        fonts = sorted(Path(folder).rglob("DejaVuSans*.ttf")) if Path(folder).is_dir() else []
        bold = [f for f in fonts if f.name == "DejaVuSans-Bold.ttf"]
        if bold or fonts:
            return str((bold or fonts)[0])
    return None


FONT_PATH = find_font()


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if FONT_PATH:
        return ImageFont.truetype(FONT_PATH, size)
    return ImageFont.load_default(size=size)  # Pillow >= 10.1 scales its built-in font


def photo(
    digit: str = "3",
    size: tuple[int, int] = (200, 200),
    ink: tuple[int, int, int] = BLACK,
    paper: tuple[int, int, int] = WHITE,
    offset: tuple[float, float] = (0.0, 0.0),  # text centre, as a fraction of the size
    angle: float = 0.0,
    noise: float = 0.0,
    seed: int = 0,
) -> Image.Image:
    """A digit written on paper: dark on light, anti-aliased, optionally rotated and noisy."""
    width, height = size
    centre = (width * (0.5 + offset[0]), height * (0.5 + offset[1]))
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).text(centre, digit, fill=255, font=font(int(min(size) * 0.6)),
                              anchor="mm")
    if angle:
        mask = mask.rotate(angle, resample=Image.Resampling.BICUBIC, center=centre)
    alpha = np.asarray(mask, dtype=np.float64)[..., None] / 255.0
    rgb = np.array(paper, dtype=np.float64) * (1 - alpha) + np.array(ink, dtype=np.float64) * alpha
    if noise:
        rgb += np.random.default_rng(seed).normal(0.0, noise, rgb.shape)
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))


def save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def ink_box(final: np.ndarray, level: int = 30) -> tuple[int, int]:
    rows = np.flatnonzero((final > level).any(axis=1))
    cols = np.flatnonzero((final > level).any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def assert_mnist_like(p: Preprocessed, inverted: bool = True) -> None:
    assert p.final.shape == (28, 28) and p.final.dtype == np.uint8
    assert p.inverted is inverted
    assert p.final.max() == 255 and p.final[0].max() == 0  # white ink, black margins
    row, col = ndimage.center_of_mass(p.final)
    # Whole-pixel shifts towards (14, 14), like MNIST: always within half a pixel
    assert abs(row - 14.0) <= 0.5 + 1e-6 and abs(col - 14.0) <= 0.5 + 1e-6
    assert 19 <= max(ink_box(p.final)) <= 21
    assert max(p.scaled.shape) == 20


# --------------------------------------------------------------------------------------------
# Photos of digits


@pytest.mark.parametrize(
    "name, image, suffix",
    [
        ("small", photo("7", size=(40, 40)), ".png"),
        ("medium-offset", photo("2", size=(160, 120), offset=(0.2, -0.1)), ".png"),
        ("large-noisy", photo("5", size=(600, 450), offset=(-0.2, 0.15), noise=10), ".jpg"),
        ("rotated", photo("4", size=(300, 300), angle=25, noise=6), ".png"),
        ("blue-on-cream", photo("8", size=(400, 300), ink=BLUE_INK, paper=CREAM, noise=8), ".jpg"),
        ("tall-canvas", photo("0", size=(90, 320), offset=(0.0, 0.3)), ".jpg"),
    ],
)
def test_photo_becomes_mnist_like(tmp_path, name, image, suffix):
    p = load_and_preprocess(save(image, tmp_path / f"{name}{suffix}"))
    assert_mnist_like(p)
    assert p.gray.shape == (image.height, image.width)
    assert p.ink.shape == p.gray.shape


def test_position_and_size_do_not_matter(tmp_path):
    # The same digit small in a corner and large in the middle should give nearly the same image
    a = preprocess(photo("6", size=(500, 500), offset=(-0.3, 0.3)).resize((500, 500)))
    b = preprocess(photo("6", size=(120, 120)))
    assert np.abs(a.final.astype(int) - b.final.astype(int)).mean() < 12


def test_white_on_black_is_not_inverted():
    p = preprocess(photo("9", size=(150, 150), ink=WHITE, paper=BLACK, noise=5))
    assert_mnist_like(p, inverted=False)


def test_hairline_one_gets_an_mnist_stroke():
    page = np.full((400, 300), 250, dtype=np.uint8)
    page[50:350, 150:153] = 10  # 300 px tall, 3 px wide: 0.2 px in the 20-px box
    p = preprocess(page)
    assert p.scaled.shape[0] == 20 and 2 <= p.scaled.shape[1] <= 4  # MNIST's strokes: 2 to 5 px
    assert_mnist_like(p)


def test_wide_stroke_keeps_its_aspect():
    page = np.full((100, 300), 255, dtype=np.uint8)
    page[40:60, 50:250] = 0  # 200 x 20
    p = preprocess(page)
    assert p.scaled.shape == (2, 20)
    assert ink_box(p.final) == (2, 20)


def test_soft_strokes_are_kept():
    p = preprocess(photo("3", size=(300, 300), noise=4))
    levels = np.unique(p.final)
    assert len(levels) > 20  # anti-aliased, not binarised
    assert 0 < p.threshold < 255


def test_output_is_a_fixed_point():
    # MNIST digits are themselves the result of this procedure: doing it again changes little
    first = preprocess(photo("2", size=(300, 300), noise=6)).final
    again = preprocess(first)
    assert not again.inverted
    assert np.abs(again.final.astype(int) - first.astype(int)).max() <= 3


def test_real_mnist_digits_round_trip(mnist):
    digits = mnist.test.images[:300, 0].numpy()
    unchanged = 0
    for digit in digits:
        p = preprocess(digit)
        assert not p.inverted
        unchanged += int(np.abs(p.final.astype(int) - digit).max() <= 3)
    assert unchanged >= 0.98 * len(digits)


# --------------------------------------------------------------------------------------------
# Formats and modes


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".gif", ".webp", ".tif"])
def test_formats(tmp_path, suffix):
    path = save(photo("5", size=(120, 100), noise=4), tmp_path / f"digit{suffix}")
    assert load_image(path).mode == "L"
    assert_mnist_like(load_and_preprocess(path))


def test_bytes_source(tmp_path):
    data = save(photo("1", size=(80, 80)), tmp_path / "d.png").read_bytes()
    assert_mnist_like(load_and_preprocess(data))


def test_rgba_transparent_background_is_white_paper(tmp_path):
    # Black ink on fully transparent *black* pixels: only compositing over white finds the ink
    mask = np.asarray(photo("3", size=(120, 120), ink=WHITE, paper=BLACK).convert("L"))
    rgba = np.zeros((120, 120, 4), dtype=np.uint8)
    rgba[..., 3] = mask
    path = save(Image.fromarray(rgba), tmp_path / "transparent.png")
    assert_mnist_like(load_and_preprocess(path))
    la = Image.fromarray(rgba).convert("LA")
    assert_mnist_like(preprocess(la))


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (100, 100), 0)
    image.putpalette([0, 0, 0, 20, 20, 20] + [0] * 762)  # both entries dark
    ImageDraw.Draw(image).text((50, 50), "4", fill=1, font=font(60), anchor="mm")
    for suffix in (".png", ".gif"):
        path = save(image, tmp_path / f"palette{suffix}", transparency=0)
        assert_mnist_like(load_and_preprocess(path))


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    gray = np.asarray(photo("2", size=(100, 100)).convert("L"), dtype=np.float64)
    levels = (5_000 + gray / 255 * 55_000).astype(np.uint16)  # ink 5000, paper 60000
    path = save(Image.fromarray(levels), tmp_path / "deep.png")
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    loaded = np.asarray(load_image(path))
    assert loaded.min() == round(5_000 / 257) and loaded.max() == round(60_000 / 257)
    assert_mnist_like(load_and_preprocess(path))


def test_wide_integer_and_float_modes(tmp_path):
    gray = np.asarray(photo("6", size=(90, 90)).convert("L"))
    integer = save(Image.fromarray(gray.astype(np.int32) * 100), tmp_path / "int.tif")
    assert_mnist_like(load_and_preprocess(integer))
    floats = save(Image.fromarray(gray.astype(np.float32) / 255), tmp_path / "float.tif")
    with Image.open(floats) as raw:
        assert raw.mode == "F"
    assert_mnist_like(load_and_preprocess(floats))


def test_cmyk_and_bilevel(tmp_path):
    image = photo("7", size=(120, 120))
    assert_mnist_like(load_and_preprocess(save(image.convert("CMYK"), tmp_path / "c.jpg")))
    assert_mnist_like(load_and_preprocess(save(image.convert("1"), tmp_path / "b.png")))


def test_array_inputs():
    gray = np.asarray(photo("8", size=(100, 100)).convert("L"))
    assert_mnist_like(preprocess(gray.astype(np.float32) / 255))
    assert_mnist_like(preprocess(gray > 128))
    assert_mnist_like(preprocess(np.asarray(photo("8", size=(100, 100), ink=BLUE_INK))))
    with pytest.raises(ImageError, match="unsupported array"):
        preprocess(np.zeros((4, 4, 2)), source="two-channel")


def test_exif_orientation_is_honoured(tmp_path):
    # Stored sideways with orientation 6 ("rotate 90 degrees clockwise to display")
    upright = photo("7", size=(160, 240), offset=(0.1, -0.1), noise=4)
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(stored, tmp_path / "sideways.jpg", exif=exif, quality=95)
    assert load_image(path).size == upright.size
    expected = preprocess(upright).final.astype(int)
    got = load_and_preprocess(path).final.astype(int)
    ignored = preprocess(stored).final.astype(int)
    assert np.abs(got - expected).mean() < 8
    assert np.abs(ignored - expected).mean() > 2 * np.abs(got - expected).mean()


# --------------------------------------------------------------------------------------------
# Bad inputs


def png_with_size(width: int, height: int) -> bytes:
    """A real small PNG whose header claims another size (its pixel data no longer fits)."""
    buffer = io.BytesIO()
    Image.new("1", (8, 8), 1).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def test_missing_empty_and_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="nope.png: file not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png: empty file"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    (tmp_path / "notes.png").write_text("a shopping list, not a picture\n")
    with pytest.raises(ImageError, match="notes.png: not an image"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(ImageError, match="<bytes>: not an image"):
        load_and_preprocess(b"GIF89a but not really")


def test_unlisted_format_is_refused(tmp_path):
    path = save(photo(size=(50, 50)), tmp_path / "digit.ppm")
    with pytest.raises(ImageError, match="not an image"):
        load_image(path)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated(tmp_path, suffix):
    full = save(photo("3", size=(200, 200), noise=8), tmp_path / f"full{suffix}").read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageError, match=f"cut\\{suffix}: truncated or corrupt"):
        load_image(path)


def test_too_many_pixels_is_checked_before_decoding(tmp_path):
    path = tmp_path / "claims-7000.png"
    path.write_bytes(png_with_size(7000, 7000))  # 49 MP > MAX_PIXELS, but only a few bytes
    assert 7000 * 7000 > MAX_PIXELS
    start = time.perf_counter()
    with pytest.raises(ImageError, match="claims-7000.png: too many pixels"):
        load_image(path)  # decoding would have said "truncated" instead
    assert time.perf_counter() - start < 1.0
    small = save(photo(size=(100, 100)), tmp_path / "small.png")
    with pytest.raises(ImageError, match="too many pixels"):
        load_image(small, max_pixels=9_999)
    assert load_image(small, max_pixels=10_000).size == (100, 100)


@pytest.mark.parametrize("side", [10_000, 20_000])  # Pillow's warning, then its error
def test_pillow_decompression_bomb_becomes_image_error(side):
    with pytest.raises(ImageError, match="too many pixels"):
        load_image(png_with_size(side, side), max_pixels=10**9)


def test_blank_images_have_no_ink(tmp_path):
    white = save(Image.new("RGB", (200, 150), WHITE), tmp_path / "white.png")
    with pytest.raises(ImageError, match="white.png: no ink found"):
        load_and_preprocess(white)
    paper = save(photo("", size=(300, 200), paper=CREAM, noise=8), tmp_path / "paper.jpg")
    with pytest.raises(ImageError, match="paper.jpg: no ink found"):
        load_and_preprocess(paper)
    with pytest.raises(ImageError, match="no ink found"):
        preprocess(np.zeros((28, 28), dtype=np.uint8))


def test_visible_ink_is_not_blank_beside_a_few_darker_relative_pixels():
    # Pixels by a dark desk's edge lie on paper so dark that 25 gray levels make them darker
    # relative to it than ink 88 levels darker than white paper: they once pulled the split
    # between ink and faint marks above all the ink ("no ink found ... differs by 88 gray levels,
    # needed: 40")
    from mnist_cnn.images import preprocess as steps

    rng = np.random.default_rng(0)
    relative = np.concatenate([rng.uniform(0.18, 0.30, 130), rng.uniform(0.30, 0.39, 7),
                               rng.uniform(0.10, 0.21, 245), rng.uniform(0.57, 0.72, 6)])
    contrast = np.concatenate([rng.uniform(40, 50, 130), rng.uniform(70, 88, 7),
                               rng.uniform(24, 39, 245), rng.uniform(25, 31, 6)])
    relative, contrast = relative.astype(np.float32)[None, :], contrast.astype(np.float32)[None, :]
    weak = np.ones_like(relative, dtype=bool)
    strong, _ = steps._strong_ink(weak, relative, contrast, noise=5.9, source="desk.jpg")
    assert strong[0, :137].any() and not strong[0, 137:].any()


def test_image_error_is_the_project_error():
    assert issubclass(ImageError, MnistCnnError)


# --------------------------------------------------------------------------------------------
# Small pieces


def test_otsu_threshold():
    two_levels = np.bincount([10] * 50 + [200] * 50, minlength=256)
    assert 10 <= otsu_threshold(two_levels) < 200
    assert otsu_threshold(np.bincount([7] * 9, minlength=256)) is None


def test_to_tensor():
    final = preprocess(photo(size=(60, 60))).final
    tensor = to_tensor(final)
    assert tensor.shape == (1, 28, 28) and tensor.dtype == torch.uint8
    assert torch.equal(tensor[0], torch.from_numpy(final))
    with pytest.raises(ImageError):
        to_tensor(np.zeros((20, 20), dtype=np.uint8))


def test_collect_images(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("b.PNG", "a.jpg", "c.webp", "notes.txt"):
        (folder / name).write_bytes(b"x")
    (folder / "sub.png").mkdir()
    single = tmp_path / "single.txt"  # files given explicitly are taken as they are
    single.write_text("x")
    found = collect_images([str(folder), str(single), str(tmp_path / "missing.png")])
    assert found == [folder / "a.jpg", folder / "b.PNG", folder / "c.webp", single,
                     tmp_path / "missing.png"]
    assert ".tiff" in IMAGE_SUFFIXES and ".jpeg" in IMAGE_SUFFIXES


def with_specks(image: Image.Image, spots: list[tuple[float, float, float]]) -> Image.Image:
    """Dark dots (x, y, radius as fractions of the width) on the paper: dust, a pen's tap."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    for x, y, r in spots:
        cx, cy, rr = x * image.width, y * image.height, max(1.0, r * image.width)
        draw.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=(30, 30, 30))
    return image


@pytest.mark.parametrize("spots", [
    [(0.05, 0.05, 0.01)],
    [(0.93, 0.9, 0.015), (0.1, 0.85, 0.008)],
    [(0.5, 0.04, 0.012)],
])
def test_specks_away_from_the_digit_are_ignored(spots):
    clean = photo("3", size=(300, 300), noise=4)
    p = preprocess(with_specks(clean, spots))
    assert_mnist_like(p)
    assert np.abs(p.final.astype(int) - preprocess(clean).final.astype(int)).max() <= 3


def test_separate_strokes_of_a_digit_are_kept():
    # A "5" whose top bar does not touch the rest, and a broken "1": both pieces are the digit
    image = Image.new("L", (200, 200), 255)
    draw = ImageDraw.Draw(image)
    draw.line((70, 40, 140, 40), fill=0, width=12)     # the bar, on its own
    draw.line((70, 60, 70, 100), fill=0, width=12)
    draw.arc((55, 85, 145, 165), 200, 150, fill=0, width=12)
    p = preprocess(image)
    assert p.cropped.shape[0] > 120  # the bar is inside the box
    broken = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(broken).line((100, 30, 100, 90), fill=0, width=10)
    ImageDraw.Draw(broken).line((100, 110, 100, 170), fill=0, width=10)
    assert preprocess(broken).cropped.shape[0] > 130


@pytest.mark.parametrize(("size", "dot"), [(100, 1), (28, 2), (400, 3), (1000, 30)])
def test_a_dot_is_refused_as_too_small_to_be_a_digit(size, dot):
    image = np.full((size, size), 235, np.uint8)
    image[size // 3:size // 3 + dot, size // 2:size // 2 + dot] = 20  # one dark dot on paper
    with pytest.raises(ImageError, match=rf"^dot: ink too small to be a digit \({dot}x{dot} px"):
        preprocess(image, source="dot")


def test_a_small_digit_is_still_read():
    image = np.full((400, 400), 235, np.uint8)
    image[100:130, 200:204] = 20  # a "1" 30 px tall: a tenth of a canvas, well above the limit
    assert preprocess(image).final.any()


# --------------------------------------------------------------------------------------------
# Decoding within a budget (the server's work_pixels)


def test_large_jpeg_is_decoded_at_a_fraction_of_its_size(tmp_path):
    path = save(photo("4", size=(2400, 1600), noise=4), tmp_path / "big.jpg", quality=90)
    with pytest.raises(TooManyPixels, match=r"big.jpg: too many pixels \(2400x1600; the limit "
                                             r"is 300,000\)"):
        load_image(path, max_pixels=300_000, work_pixels=None)  # never shrunk
    # decoded at libjpeg's 1/4 scale (600x400: within 300,000 pixels), then halved by shrinking
    loaded = load_image(path, max_pixels=300_000, work_pixels=200_000)
    assert loaded.size == (300, 200) and loaded.mode == "L"
    small = load_and_preprocess(path, max_pixels=300_000, work_pixels=200_000)
    assert_mnist_like(small)
    full = load_and_preprocess(path).final.astype(int)
    assert np.abs(small.final.astype(int) - full).mean() < 12  # the same digit, finer edges aside


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "1", "I;16"])
def test_large_images_are_shrunk_before_preprocessing(tmp_path, mode):
    big = photo("5", size=(900, 600))
    image = big.convert("L").point(lambda v: v * 257, "I").convert("I;16") if mode == "I;16" \
        else big.convert(mode)
    path = save(image, tmp_path / "big.png")
    loaded = load_image(path, work_pixels=100_000)
    assert loaded.size == (300, 200) and loaded.mode == "L"  # factor 3: 180,000 / 9 pixels
    shrunk = load_and_preprocess(path, work_pixels=100_000)
    assert_mnist_like(shrunk)
    assert np.abs(shrunk.final.astype(int) - load_and_preprocess(path).final).mean() < 12
    assert load_image(path, work_pixels=540_000).size == (900, 600)  # small enough: untouched


def test_shrinking_keeps_the_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(photo("7", size=(600, 400)), tmp_path / "turned.jpg", exif=exif)
    assert load_image(path).size == (400, 600)
    assert load_image(path, work_pixels=30_000).size == (100, 150)


def test_pillow_limit_is_not_quoted():
    with pytest.raises(TooManyPixels) as refused:
        load_image(png_with_size(20_000, 20_000), max_pixels=25_000_000)
    assert "25,000,000" in str(refused.value) and "178" not in str(refused.value)


@pytest.mark.parametrize("paper", ["ruled", "squared"])
@pytest.mark.parametrize("degrees", [0, 9, 18])
def test_rulings_across_a_large_page_are_taken_out_and_the_digit_kept(paper, degrees):
    # rulings 3 px thick every 40 px on a page 600x800, turned by up to LINE_SLOPE: long
    # enough that they are sought squeezed along their length
    page = np.full((600, 800), 225, np.uint8)
    lines = np.zeros_like(page)
    turn = np.tan(np.radians(degrees))
    for offset in range(-400, 1200, 40):
        cv2.line(lines, (0, offset), (799, offset + round(799 * turn)), 255, 3)
        if paper == "squared":
            cv2.line(lines, (offset, 0), (offset - round(599 * turn), 599), 255, 3)
    page[lines > 0] = 165
    digit = np.zeros_like(page)
    cv2.line(digit, (330, 220), (470, 220), 255, 14)  # a 7
    cv2.line(digit, (470, 220), (380, 400), 255, 14)
    page[digit > 0] = 110  # a pencil: the rulings are not much lighter, and touch it
    found = extract_ink(page)
    solid = found.solid
    assert found.inverted
    assert solid[digit > 0].mean() > 0.95
    away = (lines > 0) & (cv2.dilate(digit, np.ones((25, 25), np.uint8)) == 0)
    assert solid[away].mean() < 0.02
    assert found.ruling_angle == pytest.approx(degrees, abs=1.0)  # the page's turn


def test_a_sliver_too_faint_to_survive_scaling_is_an_empty_field():
    # two faint pixels at the ends of a 1 px wide part cut off a row's piece round away when
    # scaled to MNIST's 20 px box: it was a division by zero where their centre was sought
    sliver = np.zeros((66, 1), np.uint8)
    sliver[[0, -1]] = 1
    field = mnist_field(sliver)
    assert field.shape == (28, 28) and not field.any()
