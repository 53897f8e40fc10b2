"""mnist-cnn: handwritten-digit recognition with convolutional networks on PyTorch."""

from .checkpoint import load_checkpoint, load_pretrained, save_checkpoint
from .data import Dataset, load_dataset
from .device import Runtime, setup
from .errors import MnistCnnError
from .evaluation import Metrics, evaluate, predict_proba
from .models import MODELS, build_model, recipe_for, summary
from .recipes import Recipe
from .training import train

__all__ = [
    "MODELS", "Dataset", "Metrics", "MnistCnnError", "Recipe", "Runtime", "build_model",
    "evaluate", "load_checkpoint", "load_dataset", "load_pretrained", "predict_proba", "recipe_for",
    "save_checkpoint", "setup", "summary", "train",
]
__version__ = "0.1.0"
