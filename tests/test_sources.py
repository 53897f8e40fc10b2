"""mnist_cnn.data.sources: the dataset catalogue, finding the files and the downloads (from fake
mirrors: no network)."""

from __future__ import annotations

import gzip
import io
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from conftest import idx_bytes

from mnist_cnn.data import sources
from mnist_cnn.data.sources import (
    DATASETS,
    FILES,
    cache_dir,
    dataset_info,
    download,
    download_from_mirrors,
    env_var,
    find_files,
    ordered_mirrors,
)
from mnist_cnn.errors import MnistCnnError


def test_every_dataset_pins_every_file():
    for info in DATASETS.values():
        assert set(info.sha256) == set(FILES.values())
        assert all(len(digest) == 64 for digest in info.sha256.values())


def test_dataset_info_names_the_known_ones():
    assert dataset_info("mnist") is DATASETS["mnist"]
    with pytest.raises(MnistCnnError, match="unknown dataset 'nope'; known: mnist"):
        dataset_info("nope")


def test_env_var_and_cache_dir(monkeypatch, tmp_path):
    assert env_var("fashion-mnist") == "FASHION_MNIST_DATA_DIR"
    monkeypatch.setenv("MNIST_CNN_CACHE", str(tmp_path))
    assert cache_dir("mnist") == tmp_path / "mnist"


def test_find_files_takes_raw_or_gz_and_needs_all_four(tmp_path):
    stems = list(FILES.values())
    for stem in stems[:3]:
        (tmp_path / stem).write_bytes(b"")
    assert find_files(tmp_path) is None
    (tmp_path / f"{stems[3]}.gz").write_bytes(b"")
    found = find_files(tmp_path)
    assert found == {**{s: tmp_path / s for s in stems[:3]}, stems[3]: tmp_path / f"{stems[3]}.gz"}


def test_https_mirrors_come_first():
    for info in DATASETS.values():
        order = ordered_mirrors(info)
        https = [url.startswith("https://") for url in order]
        assert https == sorted(https, reverse=True)
        assert sorted(order) == sorted(info.mirrors)


class Response(io.BytesIO):
    def __init__(self, body: bytes) -> None:
        super().__init__(body)
        self.headers = {"Content-Length": str(len(body))}


def test_download_reads_the_body_within_its_cap():
    def opener(url, timeout):
        return Response(b"y" * 50)

    assert download("https://x/f", opener, timeout=1) == b"y" * 50
    with pytest.raises(MnistCnnError, match="https://x/f: more than 10 bytes"):
        download("https://x/f", opener, timeout=1, cap=10)


def test_download_from_mirrors_names_each_failure(tmp_path):
    info = DATASETS["mnist"]

    def opener(url, timeout):
        raise urllib.error.URLError("no route")

    with pytest.raises(MnistCnnError) as e:
        download_from_mirrors(info, tmp_path, opener=opener)
    assert str(e.value).count("no route") == len(info.mirrors)
    assert list(tmp_path.iterdir()) == []


def test_download_from_mirrors_refuses_files_that_fail_their_checksum(tmp_path):
    info = DATASETS["mnist"]
    wrong = gzip.compress(idx_bytes(np.zeros((1, 28, 28), dtype=np.uint8)))

    def opener(url, timeout):
        return Response(wrong)

    with pytest.raises(MnistCnnError):
        download_from_mirrors(info, tmp_path, opener=opener)
    assert not any(Path(tmp_path).iterdir())  # nothing unverified is stored


def test_validation_split_is_the_lectures():
    assert sources.VALIDATION_SIZE == 5_000
