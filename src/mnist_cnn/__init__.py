"""mnist-cnn: handwritten-digit recognition with convolutional networks on PyTorch."""

from __future__ import annotations

import importlib

# Each name loads its module on first use (PEP 562): `mnist-cnn --help` and the commands that need
# no network would otherwise wait for torch to import, which takes seconds on a small CPU
_HOMES = {
    "load_checkpoint": "models.checkpoint", "load_pretrained": "models.checkpoint",
    "save_checkpoint": "models.checkpoint",
    "Dataset": "data.dataset", "load_dataset": "data.dataset",
    "Runtime": "runtime.device", "setup": "runtime.device",
    "MnistCnnError": "errors",
    "Metrics": "inference.evaluation", "evaluate": "inference.evaluation",
    "predict_proba": "inference.evaluation",
    "MODELS": "models.registry", "build_model": "models.registry", "recipe_for": "models.registry",
    "summary": "models.summary",
    "Recipe": "models.recipes",
    "train": "training.loop",
}
__all__ = sorted(_HOMES)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
