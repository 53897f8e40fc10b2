"""Shared fixtures: the real MNIST, a tiny synthetic dataset, and IDX-file writers."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from mnist_cnn.data import Dataset, load_dataset, make_dataset
from mnist_cnn.sources import DATASETS, FILES

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST_DIR = Path(__file__).resolve().parents[2] / "shared/data/mnist"


def mnist_dir() -> Path:
    return Path(os.environ.get("MNIST_DATA_DIR") or DEFAULT_MNIST_DIR)


def idx_bytes(array: np.ndarray, dtype_code: int = 0x08) -> bytes:
    """An uncompressed IDX file holding `array` (written independently of the package)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, dtype_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write `array` as an IDX file at `path` (gzip-compressed, with a .gz suffix, if `gz`)."""
    raw = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return path


def synthetic_arrays(n_train: int = 700, n_test: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """Learnable fake digits: faint noise plus a bright band whose row depends on the label."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            row = 3 + 2 * int(label)
            images[i, row:row + 2, 4:24] = 255
        return images, labels

    train_x, train_y = make(n_train)
    test_x, test_y = make(n_test)
    return {"train_images": train_x, "train_labels": train_y,
            "test_images": test_x, "test_labels": test_y}


def write_dataset_dir(directory: Path, arrays: dict[str, np.ndarray], gz: bool = True) -> Path:
    """The four files of `arrays` in `directory`, under the MNIST file names."""
    for key, stem in FILES.items():
        write_idx(directory / stem, arrays[key], gz=gz)
    return directory


@pytest.fixture(scope="session")
def mnist() -> Dataset:
    return load_dataset("mnist", data_dir=mnist_dir())


@pytest.fixture(scope="session")
def mnist_data_dir() -> Path:
    return mnist_dir()


@pytest.fixture(scope="session")
def tiny_dataset() -> Dataset:
    """600 train / 100 validation / 200 test synthetic images."""
    return make_dataset(synthetic_arrays(), DATASETS["mnist"], "synthetic", val_size=100)


@pytest.fixture(scope="session")
def runtime():
    from mnist_cnn.device import setup

    return setup("cpu", threads=1)  # one thread: the machine is shared, and results repeat
