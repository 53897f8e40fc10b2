"""The VGG-style `best` family: `best`, `wide` (1.5x the channels) and `five` (5x5 kernels, a
dense hidden layer), the last two for ensembles."""

from __future__ import annotations

from torch import nn

from .layers import Dropout, conv5_bn, conv_bn
from .recipes import Recipe
from .registry import register


def best_recipe(name: str) -> Recipe:
    """`best`'s recipe, which the networks built on it train with too."""
    return Recipe(model=name, epochs=15, batch_size=128, lr=0.003, schedule="onecycle",
                  warmup=0.2, label_smoothing=0.1, dropout=0.25, augment="standard",
                  precision="bf16")


@register(best_recipe("best"))
def best_cnn(dropout: float = 0.25, width: int = 32, channels: int = 1) -> nn.Module:
    w = width
    return nn.Sequential(
        *conv_bn(channels, w),                              # (?, 28, 28, w)
        nn.MaxPool2d(2),                                    # (?, 14, 14, w)
        *conv_bn(w, 2 * w), *conv_bn(2 * w, 2 * w),         # (?, 14, 14, 2w)
        nn.MaxPool2d(2),                                    # (?, 7, 7, 2w)
        *conv_bn(2 * w, 4 * w), *conv_bn(4 * w, 4 * w),     # (?, 7, 7, 4w)
        nn.MaxPool2d(2, ceil_mode=True),                    # (?, 4, 4, 4w)
        nn.Flatten(),
        Dropout(dropout),
        nn.Linear(64 * w, 10),
    )


# Ensemble members that differ from `best` in more than their seed: members that make the same
# mistakes cannot correct each other (issue 13: five `best` seeds scored no better than one).
@register(best_recipe("wide"))
def wide_cnn(dropout: float = 0.25, width: int = 48) -> nn.Module:
    return best_cnn(dropout, width)


@register(best_recipe("five"))
def five_cnn(dropout: float = 0.25, width: int = 32) -> nn.Module:
    w = width
    return nn.Sequential(
        *conv5_bn(1, w), *conv5_bn(w, w),                  # (?, 28, 28, w)
        nn.MaxPool2d(2),                                    # (?, 14, 14, w)
        *conv_bn(w, 2 * w), *conv_bn(2 * w, 2 * w),         # (?, 14, 14, 2w)
        nn.MaxPool2d(2),                                    # (?, 7, 7, 2w)
        nn.Flatten(),
        Dropout(dropout),
        nn.Linear(2 * w * 49, 256, bias=False),
        nn.BatchNorm1d(256),
        nn.ReLU(inplace=True),
        Dropout(dropout),
        nn.Linear(256, 10),
    )
