"""Trained checkpoints shared by test_predict.py and test_export.py: trained once per session.

A module rather than conftest fixtures: a session fixture imported into two test modules would be
created once per module, so the training is cached here instead.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mnist_cnn.checkpoint import load_checkpoint, save_checkpoint
from mnist_cnn.cli import main
from mnist_cnn.data import Dataset, load_dataset
from mnist_cnn.device import setup
from mnist_cnn.models import build_model, recipe_for
from mnist_cnn.training import CHECKPOINT_NAME, train

MNIST_DIR = Path(os.environ.get("MNIST_DATA_DIR")
                 or Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")


@dataclass
class Trained:
    data: Dataset
    checkpoint: Path  # simple, 0.15 epochs: about 95% on the test set (~4 s, one thread)
    other: Path  # the same weights, perturbed: a second, different member for ensembles


_cache: dict[str, Trained] = {}


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """The CLI in-process: exit status, standard output and standard error."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _train(out: Path, data: Dataset) -> Path:
    recipe = recipe_for("simple").replace(epochs=0.15, batch_size=50, lr=2e-3)
    # one thread: on 2 shared cores, two threads competing with other jobs train 10x slower
    runtime = setup("cpu", threads=1, tune_allocator=True)
    train(build_model(recipe), data, recipe, runtime, out, progress=False, log=lambda _: None)
    return out / CHECKPOINT_NAME


def _perturbed_copy(checkpoint: Path, out: Path) -> Path:
    """A second model without a second training: every weight moved by a little noise."""
    model, meta = load_checkpoint(checkpoint)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.3 * p.std())
    save_checkpoint(out, model, meta)
    return out


def trained(tmp_path_factory) -> Trained:
    """The session's checkpoints (pass pytest's tmp_path_factory: it is one object per session)."""
    if "simple" not in _cache:
        base = tmp_path_factory.mktemp("trained")
        data = load_dataset("mnist", MNIST_DIR)
        checkpoint = _train(base / "a", data)
        _cache["simple"] = Trained(data, checkpoint, _perturbed_copy(checkpoint, base / "b.safetensors"))
    return _cache["simple"]
