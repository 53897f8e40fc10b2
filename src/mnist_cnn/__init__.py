"""mnist-cnn: handwritten-digit recognition with convolutional networks on PyTorch."""

import importlib

# Each public name, from the module that defines it; loaded on first use (PEP 562), so that the
# `mnist-cnn` command starts before torch is imported (see __main__.py)
_EXPORTS = {
    "load_checkpoint": "checkpoint", "load_pretrained": "checkpoint",
    "save_checkpoint": "checkpoint", "Dataset": "data", "load_dataset": "data",
    "Runtime": "device", "setup": "device", "MnistCnnError": "errors", "Metrics": "evaluation",
    "evaluate": "evaluation", "predict_proba": "evaluation", "MODELS": "models",
    "build_model": "models", "recipe_for": "models", "summary": "models", "Recipe": "recipes",
    "train": "training",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
