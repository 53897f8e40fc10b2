"""Shared fixtures: the real MNIST, a tiny synthetic dataset, trained checkpoints, IDX-file
writers, and the command line run in-process."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_cnn.data.dataset import Dataset, load_dataset, make_dataset
from mnist_cnn.data.sources import DATASETS, FILES, find_files, locate
from mnist_cnn.errors import MnistCnnError

REPO = Path(__file__).resolve().parents[1]
NO_DATA = "the real MNIST could not be had"  # how a skip for want of data begins (summarised)


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
    """The real MNIST's folder, found as the product finds it (sources.locate): $MNIST_DATA_DIR,
    the user cache, or a download checked against the pinned SHA-256s. When it cannot be had, a
    test that needs it fails; MNIST_CNN_REQUIRE_DATA=0 makes that a skip, which the summary at
    the end of the run names (pytest_terminal_summary below), so that it is never missed."""
    try:
        return locate("mnist")
    except MnistCnnError as e:
        message = f"{NO_DATA}: {e}"
        if os.environ.get("MNIST_CNN_REQUIRE_DATA") == "0":
            pytest.skip(message)
        pytest.fail(f"{message}\n(MNIST_CNN_REQUIRE_DATA=0 skips the tests that need it)",
                    pytrace=False)


@pytest.fixture(scope="session")
def mnist_gz_dir(mnist_data_dir, tmp_path_factory) -> Path:
    """The real MNIST as the four .gz files a mirror serves (the cache keeps them raw)."""
    paths = find_files(mnist_data_dir)
    if all(p.suffix == ".gz" for p in paths.values()):
        return mnist_data_dir
    folder = tmp_path_factory.mktemp("mnist-gz")
    for stem, path in paths.items():
        raw = path.read_bytes()
        if path.suffix != ".gz":
            raw = gzip.compress(raw, compresslevel=1)  # level 1: a second, not ten
        (folder / f"{stem}.gz").write_bytes(raw)
    return folder


def pytest_terminal_summary(terminalreporter) -> None:
    """Says loudly how many tests skipped for want of the real MNIST (only `-rs` would)."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if NO_DATA in str(r.longrepr)]
    if skipped:
        terminalreporter.write_sep("!", f"{len(skipped)} tests that need the real MNIST were "
                                   "SKIPPED (MNIST_CNN_REQUIRE_DATA=0)", red=True, bold=True)


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
    from mnist_cnn.models.checkpoint import load_checkpoint, save_checkpoint
    from mnist_cnn.models.registry import build_model, recipe_for
    from mnist_cnn.runtime.device import setup
    from mnist_cnn.training.loop import CHECKPOINT_NAME, train

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    from mnist_cnn.runtime.device import setup

    return setup("cpu", threads=1)  # one thread: the machine is shared, and results repeat
