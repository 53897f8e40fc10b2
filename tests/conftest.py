"""Shared fixtures: the real MNIST, a tiny synthetic dataset, trained checkpoints, IDX-file
writers, and the command line run in-process."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_cnn.data import Dataset, load_dataset, make_dataset
from mnist_cnn.sources import DATASETS, FILES, find_files

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
def mnist_data_dir() -> Path:
    """The real MNIST's folder. Without it the tests that need it skip, saying why; under CI
    (MNIST_CNN_REQUIRE_DATA) they fail instead, so that a missing file cannot pass unseen."""
    directory = mnist_dir()
    if find_files(directory) is None:
        message = f"MNIST not found in {directory} (set MNIST_DATA_DIR)"
        if os.environ.get("MNIST_CNN_REQUIRE_DATA"):
            pytest.fail(message)
        pytest.skip(message)
    return directory


@pytest.fixture(scope="session")
def mnist(mnist_data_dir) -> Dataset:
    return load_dataset("mnist", data_dir=mnist_data_dir)


@dataclass
class Trained:
    data: Dataset
    checkpoint: Path  # simple, 0.15 epochs: about 95% on the test set (~4 s, one thread)
    other: Path  # the same weights, perturbed: a second, different member for ensembles


@pytest.fixture(scope="session")
def models(tmp_path_factory, mnist) -> Trained:
    """Trained checkpoints for the tests that predict, serve, export and plot: trained once."""
    from mnist_cnn.checkpoint import load_checkpoint, save_checkpoint
    from mnist_cnn.device import setup
    from mnist_cnn.models import build_model, recipe_for
    from mnist_cnn.training import CHECKPOINT_NAME, train

    base = tmp_path_factory.mktemp("trained")
    recipe = recipe_for("simple").replace(epochs=0.15, batch_size=50, lr=2e-3)
    # one thread: on 2 shared cores, two threads competing with other jobs train 10x slower
    runtime = setup("cpu", threads=1, tune_allocator=True)
    train(build_model(recipe), mnist, recipe, runtime, base / "a", progress=False,
          log=lambda _: None)
    checkpoint = base / "a" / CHECKPOINT_NAME
    # a second member without a second training: every weight moved by a little noise
    model, meta = load_checkpoint(checkpoint)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.3 * p.std())
    save_checkpoint(base / "b.safetensors", model, meta)
    return Trained(mnist, checkpoint, base / "b.safetensors")


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """The CLI in-process: exit status, standard output and standard error."""
    from mnist_cnn.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def tiny_dataset() -> Dataset:
    """600 train / 100 validation / 200 test synthetic images."""
    return make_dataset(synthetic_arrays(), DATASETS["mnist"], "synthetic", val_size=100)


@pytest.fixture(scope="session")
def runtime():
    from mnist_cnn.device import setup

    return setup("cpu", threads=1)  # one thread: the machine is shared, and results repeat
