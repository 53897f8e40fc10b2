"""The mnist-cnn command as torchrun starts it in test_distributed.py.

The data is the tiny synthetic dataset (the command itself only loads checksummed MNIST files).
With KILL_AT=RANK:STEP, that rank kills itself (SIGKILL, as a crash or the OOM killer would) when
it reaches that step, in the group's first attempt only: a test of torchrun's restarts.

Alone (without torchrun) it is the command on the tiny dataset, for tests of a process of its own.
There INTERRUPT_AT=STEP sends the process a SIGINT (Ctrl-C) when it reaches that training step,
and INTERRUPT_IN=MODULE.FUNCTION when that function is called.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

from conftest import synthetic_arrays

import mnist_cnn.data.dataset
import mnist_cnn.training.loop
from mnist_cnn.cli import main
from mnist_cnn.data.dataset import Dataset, make_dataset
from mnist_cnn.data.sources import DATASETS


def tiny_dataset(*_args, **_kwargs) -> Dataset:
    """600 train / 100 validation / 200 test synthetic images, as conftest's fixture."""
    return make_dataset(synthetic_arrays(), DATASETS["mnist"], "synthetic", val_size=100)


def kill_at(rank: int, step: int) -> None:
    real = mnist_cnn.training.loop.lr_factor

    def lr_factor(recipe, at: int, total: int) -> float:  # called once per step
        if at == step and int(os.environ["RANK"]) == rank:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(recipe, at, total)

    mnist_cnn.training.loop.lr_factor = lr_factor


def interrupt_at(step: int) -> None:
    real = mnist_cnn.training.loop.lr_factor

    def lr_factor(recipe, at: int, total: int) -> float:
        if at == step:
            os.kill(os.getpid(), signal.SIGINT)
        return real(recipe, at, total)

    mnist_cnn.training.loop.lr_factor = lr_factor


def interrupt_in(target: str) -> None:
    module_name, name = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    real = getattr(module, name)

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    setattr(module, name, interrupted)


if __name__ == "__main__":
    # Ctrl-C as a foreground job gets it, also when the tests run in the background (a shell
    # starts background jobs with SIGINT ignored, and Python keeps that)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    mnist_cnn.data.dataset.load_dataset = tiny_dataset
    if os.environ.get("KILL_AT") and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
        kill_at(*map(int, os.environ["KILL_AT"].split(":")))
    if os.environ.get("INTERRUPT_AT"):
        interrupt_at(int(os.environ["INTERRUPT_AT"]))
    if os.environ.get("INTERRUPT_IN"):
        interrupt_in(os.environ["INTERRUPT_IN"])
    sys.exit(main(sys.argv[1:]))
