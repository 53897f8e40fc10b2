"""`mnist-cnn predict`: MNIST test digits rendered as photos, read back by a trained network."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_main
from PIL import Image, ImageFilter
from scipy import ndimage

from mnist_cnn.images.preprocess import BOX, MNIST_CENTRE, load_and_preprocess, to_tensor
from mnist_cnn.inference.ensemble import ensemble_proba
from mnist_cnn.inference.evaluation import predict_proba
from mnist_cnn.inference.predict import (
    Failure,
    Prediction,
    Predictor,
    format_result,
    predict_images,
    unique_name,
)
from mnist_cnn.models.checkpoint import load_checkpoint, save_checkpoint
from mnist_cnn.runtime.device import setup

PHOTOS = 200
SIZES = (60, 100, 150, 220, 300)  # side of the upscaled 28x28 digit, in pixels
INKS_AND_PAPERS = [((20, 20, 25), (250, 250, 245)), ((30, 40, 150), (245, 235, 210)),
                   ((60, 50, 40), (225, 225, 230)), ((10, 10, 10), (200, 205, 190))]
# one thread: the 2 cores are shared, and two threads fighting other jobs run 10x slower
ONE_CPU = ["--device", "cpu", "--threads", "1"]
LINE = re.compile(r"^(\S+): (\d) \((\d+\.\d)%\)  alternatives: \d \(\d+\.\d%\), \d \(\d+\.\d%\)$")


def digit_photo(digit: np.ndarray, size: int, rng: np.random.Generator,
                angle: float = 0.0) -> Image.Image:
    """A 28x28 MNIST digit as a photo: dark ink on tinted paper, upscaled, placed off-centre in
    a margin, maybe rotated, with paper noise and uneven lighting."""
    up = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC),
                    dtype=np.float64) / 255.0
    # A pen stroke photographed up close has a sharp edge, where the anti-aliased digit is half
    # covered; the bicubic upscale alone would be a badly blurred photo with a wide soft halo
    stroke = np.clip((up - 0.5) / 0.2 + 0.5, 0.0, 1.0)
    ink = Image.fromarray(np.rint(stroke * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(max(0.6, size / 200)))  # the camera's own slight blur
    margin = int(rng.integers(size // 8, size // 2))
    width, height = size + 2 * margin + int(rng.integers(0, size // 2)), size + 2 * margin
    canvas = Image.new("L", (width, height), 0)
    canvas.paste(ink, (int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))))
    if angle:
        canvas = canvas.rotate(angle, resample=Image.Resampling.BICUBIC)
    alpha = np.asarray(canvas, dtype=np.float64)[..., None] / 255.0
    ink_rgb, paper_rgb = INKS_AND_PAPERS[int(rng.integers(len(INKS_AND_PAPERS)))]
    rgb = np.array(paper_rgb, dtype=np.float64) * (1 - alpha) + np.array(ink_rgb) * alpha
    rgb += rng.normal(0.0, rng.uniform(2, 8), rgb.shape)
    rgb *= np.linspace(1.0, rng.uniform(0.9, 1.0), width)[None, :, None]  # light from one side
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels and holds none: "too large" without the RAM."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def photos(models, tmp_path_factory) -> tuple[list[Path], torch.Tensor]:
    """200 test digits as photos (PNG and JPEG, five sizes, a third tilted), and their indices."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    indices = torch.from_numpy(rng.choice(len(models.data.test), PHOTOS, replace=False))
    paths = []
    for n, i in enumerate(indices.tolist()):
        # tilted by up to 5 degrees: more changes the digit itself (MNIST is not deskewed), and
        # a third of the digits at +-10 degrees costs this 95% network about a point
        angle = float(rng.uniform(-5, 5)) if n % 3 == 0 else 0.0
        image = digit_photo(models.data.test.images[i, 0].numpy(), SIZES[n % len(SIZES)], rng, angle)
        path = folder / f"digit{n:03d}.{'jpg' if n % 2 else 'png'}"
        image.save(path, quality=90) if n % 2 else image.save(path)
        paths.append(path)
    return paths, indices


@pytest.fixture(scope="module")
def mixed_folder(photos, tmp_path_factory) -> Path:
    """Three good photos and five bad files."""
    folder = tmp_path_factory.mktemp("mixed")
    for n, path in enumerate(photos[0][:3]):
        shutil.copy(path, folder / f"good{n}{path.suffix}")
    (folder / "notes.png").write_text("not a picture at all\n")
    (folder / "empty.png").write_bytes(b"")
    jpeg = photos[0][1].read_bytes()
    (folder / "cut.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    Image.new("RGB", (120, 90), (240, 240, 235)).save(folder / "blank.png")
    (folder / "huge.png").write_bytes(png_header_only(10_000, 8_000))
    return folder


# --------------------------------------------------------------------------------------------
# Photos -> the MNIST convention -> the network


def test_photos_are_centred_and_scaled_like_mnist(photos):
    for path in photos[0][:50]:  # every size, format and tint, rotated and not
        final = load_and_preprocess(path).final
        row, col = ndimage.center_of_mass(final)
        assert abs(row - MNIST_CENTRE) <= 1 and abs(col - MNIST_CENTRE) <= 1, path.name
        rows = np.flatnonzero((final > 30).any(axis=1))
        cols = np.flatnonzero((final > 30).any(axis=0))
        longer = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
        assert abs(longer - BOX) <= 1, path.name


def test_photos_are_read_as_well_as_the_original_digits(models, photos):
    """The acceptance criterion: no more than one point below the accuracy on the originals."""
    paths, indices = photos
    model, meta = load_checkpoint(models.checkpoint)
    labels = models.data.test.labels[indices]
    original = float((predict_proba(model, models.data.test.images[indices]).argmax(1) == labels)
                     .float().mean())
    results = predict_images(Predictor.load([models.checkpoint], setup("cpu", threads=1)), paths, 1)
    assert all(isinstance(r, Prediction) for r in results)
    from_photos = float((torch.tensor([r.index for r in results]) == labels).float().mean())
    print(f"accuracy: {original:.3f} on the original digits, {from_photos:.3f} on photos of them")
    assert original > 0.9
    assert from_photos >= original - 0.01 - 1e-9


def test_results_keep_the_order_and_failures_keep_their_place(models, mixed_folder):
    files = [mixed_folder / "good0.png", mixed_folder / "notes.png", mixed_folder / "good1.jpg"]
    results = predict_images(Predictor.load([models.checkpoint], setup("cpu", threads=1)), files, 2)
    assert [type(r) for r in results] == [Prediction, Failure, Prediction]
    assert [r.file for r in results] == [str(f) for f in files]
    assert results[1].error.startswith("not an image")
    good = results[0]
    assert good.digit == good.top_k[0]["class"] == str(good.index)
    assert good.inverted and len(good.top_k) == 2
    assert good.top_k[0]["probability"] >= good.top_k[1]["probability"]


def test_format_result():
    p = Prediction("photo.png", "7", 7, 0.982,
                   [{"class": "7", "probability": 0.982}, {"class": "1", "probability": 0.011},
                    {"class": "9", "probability": 0.004}], True)
    assert format_result(p) == "photo.png: 7 (98.2%)  alternatives: 1 (1.1%), 9 (0.4%)"
    p.top_k = p.top_k[:1]
    assert format_result(p) == "photo.png: 7 (98.2%)"
    assert format_result(Failure("a.txt", "not an image")) == "a.txt: error: not an image"


def test_format_result_of_a_non_digit():
    p = Prediction("photo.png", "4", 4, 0.31, [{"class": "4", "probability": 0.31},
                                               {"class": "9", "probability": 0.2}], True, False)
    assert format_result(p) == "photo.png: not a digit (closest: 4, 31.0%)  alternatives: 9 (20.0%)"


def with_threshold(checkpoint: Path, threshold: float, path: Path) -> Path:
    model, meta = load_checkpoint(checkpoint)
    save_checkpoint(path, model, {**meta.to_dict(), "digit_threshold": threshold})
    return path


def test_cli_says_not_a_digit_below_the_checkpoints_threshold(models, photos, tmp_path):
    files = [str(p) for p in photos[0][:4]]
    probabilities = []
    for threshold in (0.0, 1.0):
        checkpoint = with_threshold(models.checkpoint, threshold, tmp_path / f"{threshold}.safetensors")
        code, out, _ = run_main(["predict", str(checkpoint), *files, "--json", *ONE_CPU])
        results = json.loads(out)
        assert code == 0 and len(results) == 4
        # at 0 everything is a digit; at 1 nothing is (no answer is 100% sure in float32 here)
        assert [r["is_digit"] for r in results] == [threshold == 0.0] * 4
        probabilities.append([r["probability"] for r in results])
        _, text, _ = run_main(["predict", str(checkpoint), *files, "--top-k", "1", *ONE_CPU])
        if threshold == 1.0:
            assert all(re.fullmatch(r"\S+: not a digit \(closest: \d, \d+\.\d%\)", line)
                       for line in text.splitlines()), text
        else:
            assert "not a digit" not in text
    assert probabilities[0] == probabilities[1]  # the closest class is still given


def test_unique_names_for_saved_images():
    used: set[str] = set()
    assert [unique_name(Path(p), used) for p in ("a/x.png", "b/x.jpg", "y.jpeg", "x.gif")] == [
        "x.png", "x-2.png", "y.png", "x-3.png"]


# --------------------------------------------------------------------------------------------
# The command


def test_cli_prints_good_images_and_reports_bad_ones(models, mixed_folder):
    missing = mixed_folder / "missing.png"
    code, out, err = run_main(["predict", str(models.checkpoint), str(mixed_folder), str(missing),
                               *ONE_CPU])
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 3 and all(LINE.match(line) for line in lines), out
    assert sorted(Path(LINE.match(line)[1]).name for line in lines) == ["good0.png", "good1.jpg",
                                                                       "good2.png"]
    expected = {"notes.png": "not an image", "empty.png": "empty file", "cut.jpg": "truncated",
                "blank.png": "no ink", "huge.png": "too many pixels", "missing.png": "file not found"}
    for name, reason in expected.items():
        assert re.search(rf"^\S*{re.escape(name)}: error: {reason}", err, re.MULTILINE), (name, err)
    assert err.rstrip().endswith("mnist-cnn: error: 6 of 9 images could not be read")


def test_cli_exit_status_is_0_when_every_image_is_read(models, photos):
    code, out, err = run_main(["predict", str(models.checkpoint), *map(str, photos[0][:4]),
                               "--top-k", "1", *ONE_CPU])
    assert code == 0 and err == ""
    assert len(out.splitlines()) == 4 and "alternatives" not in out


def test_cli_takes_a_training_runs_folder_for_its_checkpoint(models, photos):
    # a run's folder names its checkpoint, as for evaluate: it is not searched for images
    # (which left the shipped model answering in its place)
    files = [str(f) for f in photos[0][:3]]
    by_file = run_main(["predict", str(models.checkpoint), *files, "--json", *ONE_CPU])
    by_folder = run_main(["predict", str(models.checkpoint.parent), *files, "--json", *ONE_CPU])
    shipped = run_main(["predict", *files, "--json", *ONE_CPU])
    assert by_file[0] == by_folder[0] == 0
    assert by_folder[1] == by_file[1] != shipped[1]


def test_cli_json(models, mixed_folder):
    code, out, _ = run_main(["predict", str(models.checkpoint), str(mixed_folder), "--json",
                             "--top-k", "4", *ONE_CPU])
    assert code == 1
    results = json.loads(out)
    assert len(results) == 8
    good = [r for r in results if "error" not in r]
    bad = [r for r in results if "error" in r]
    assert len(good) == 3 and len(bad) == 5
    assert all(set(r) == {"file", "error"} for r in bad)
    for r in good:
        assert set(r) == {"file", "digit", "index", "probability", "top_k", "inverted", "is_digit"}
        assert r["is_digit"] is True  # this checkpoint was never calibrated: it refuses nothing
        probabilities = [t["probability"] for t in r["top_k"]]
        assert len(probabilities) == 4 and probabilities == sorted(probabilities, reverse=True)
        assert r["digit"] == r["top_k"][0]["class"] and r["probability"] == probabilities[0]
        assert r["inverted"] is True


def test_cli_saves_the_preprocessed_images(models, mixed_folder, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(mixed_folder / "good0.png", folder / "x.png")
    shutil.copy(mixed_folder / "good1.jpg", folder / "x.jpg")
    out = tmp_path / "seen"
    code, _, _ = run_main(["predict", str(models.checkpoint), str(folder), "--save-preprocessed",
                           str(out), *ONE_CPU])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["x-2.png", "x.png"]
    for saved, source in ((out / "x.png", folder / "x.jpg"), (out / "x-2.png", folder / "x.png")):
        with Image.open(saved) as image:
            assert image.size == (28, 28) and image.mode == "L"
            assert np.array_equal(np.asarray(image), load_and_preprocess(source).final)


def test_cli_ensemble_averages_the_members(models, photos):
    files = photos[0][:6]
    options = ["--json", "--top-k", "10", *ONE_CPU]

    def probabilities(*checkpoints: Path) -> torch.Tensor:
        code, out, _ = run_main(["predict", *map(str, checkpoints), *map(str, files), *options])
        assert code == 0
        return torch.tensor([[next(t["probability"] for t in r["top_k"] if t["class"] == str(c))
                              for c in range(10)] for r in json.loads(out)])

    both = probabilities(models.checkpoint, models.other)
    members = [load_checkpoint(c)[0] for c in (models.checkpoint, models.other)]
    images = torch.stack([to_tensor(load_and_preprocess(f).final) for f in files])
    assert torch.allclose(both, ensemble_proba(members, images), atol=1e-6)
    one = probabilities(models.checkpoint)
    assert (both - one).abs().max() > 1e-3  # the second member really counted


def test_cli_needs_images():
    """(Without a checkpoint, the shipped model answers: tests/test_pretrained.py.)"""
    code, out, err = run_main(["predict", "model.safetensors"])
    assert code == 1 and out == ""
    assert err.startswith("mnist-cnn: error: ") and "no images given" in err


def test_cli_bad_top_k_and_bad_checkpoint(models, photos, tmp_path):
    code, _, err = run_main(["predict", str(models.checkpoint), str(photos[0][0]), "--top-k", "0",
                             *ONE_CPU])
    assert code == 1 and "top-k must be at least 1" in err
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"not safetensors")
    code, _, err = run_main(["predict", str(fake), str(photos[0][0]), *ONE_CPU])
    assert code == 1 and "not a readable checkpoint" in err


def test_cli_empty_folder(models, tmp_path):
    code, _, err = run_main(["predict", str(models.checkpoint), str(tmp_path), *ONE_CPU])
    assert code == 1 and "no images found" in err


def test_cli_options_may_come_between_the_files(models, photos):
    files = [str(f) for f in photos[0][:3]]
    code, out, _ = run_main(["predict", str(models.checkpoint), files[0], "--top-k", "1",
                             *files[1:], "--json", *ONE_CPU])
    assert code == 0
    results = json.loads(out)
    assert [r["file"] for r in results] == files
    assert all(len(r["top_k"]) == 1 for r in results)


def test_cli_reports_broken_links_and_prints_any_file_name_as_utf8(models, photos, tmp_path):
    folder = tmp_path / "links"
    folder.mkdir()
    shutil.copy(photos[0][0], folder / "good.png")
    # a name that is not UTF-8: Python holds it with lone surrogates, which JSON must not carry
    shutil.copy(photos[0][1], os.path.join(os.fsencode(folder), b"caf\xe9.png"))
    (folder / "gone.png").symlink_to(tmp_path / "deleted.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    code, out, err = run_main(["predict", str(models.checkpoint), str(folder), "--json",
                               *ONE_CPU])
    assert code == 1
    out.encode("utf-8")  # raises on a lone surrogate
    results = {Path(r["file"]).name: r for r in json.loads(out)}
    assert set(results) == {"good.png", "caf\\xe9.png", "gone.png", "loop.png"}
    assert "digit" in results["caf\\xe9.png"] and "digit" in results["good.png"]
    assert results["gone.png"]["error"].startswith("broken symbolic link (to ")
    assert results["loop.png"]["error"] == "symbolic link loop"
    assert err.rstrip().endswith("mnist-cnn: error: 2 of 4 images could not be read")


def test_cli_unreadable_folder_is_a_one_line_error(models, tmp_path, monkeypatch):
    real_listdir = os.listdir

    def listdir(path="."):  # root reads everything: deny as a non-root user meets it
        if os.fspath(path) == str(tmp_path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    code, out, err = run_main(["predict", str(models.checkpoint), str(tmp_path), *ONE_CPU])
    assert code == 1 and out == ""
    assert err == f"mnist-cnn: error: {tmp_path}: cannot read the folder (permission denied)\n"
