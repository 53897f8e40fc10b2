"""mnist-cnn: handwritten-digit recognition with convolutional networks on PyTorch."""

from __future__ import annotations

import importlib

# Each name loads its module on first use (PEP 562): `mnist-cnn --help` and the commands that need
# no network would otherwise wait for torch to import, which takes seconds on a small CPU
_HOMES = {
    "load_checkpoint": "checkpoint", "load_pretrained": "checkpoint", "save_checkpoint": "checkpoint",
    "Dataset": "data", "load_dataset": "data",
    "Runtime": "device", "setup": "device",
    "MnistCnnError": "errors",
    "Metrics": "evaluation", "evaluate": "evaluation", "predict_proba": "evaluation",
    "MODELS": "models", "build_model": "models", "recipe_for": "models", "summary": "models",
    "Recipe": "recipes",
    "train": "training",
}
__all__ = sorted(_HOMES)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
