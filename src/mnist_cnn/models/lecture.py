"""The lecture's networks: the simple CNN (2 conv blocks) and the deep one (3 blocks, a dense
layer of 625), with the lecture's initialisation."""

from __future__ import annotations

from torch import nn

from .layers import Dropout, conv_block
from .recipes import Recipe
from .registry import register


def lecture_init(model: nn.Module) -> None:
    """The lecture's initialisation: conv kernels N(0, 0.01) without bias, dense weights Xavier
    (Glorot uniform, TF's default), dense biases N(0, 1)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.01)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.normal_(m.bias, 0.0, 1.0)


@register(Recipe(model="simple"))
def simple_cnn(dropout: float = 0.0) -> nn.Module:
    model = nn.Sequential(
        *conv_block(1, 32, dropout),   # (?, 14, 14, 32)
        *conv_block(32, 64, dropout),  # (?, 7, 7, 64)
        nn.Flatten(),         # (?, 3136)
        nn.Linear(3136, 10),
    )
    lecture_init(model)
    return model


@register(Recipe(model="deep", dropout=0.3))
def deep_cnn(dropout: float = 0.3) -> nn.Module:
    model = nn.Sequential(
        *conv_block(1, 32, dropout),    # (?, 14, 14, 32)
        *conv_block(32, 64, dropout),   # (?, 7, 7, 64)
        *conv_block(64, 128, dropout),  # (?, 4, 4, 128)
        nn.Flatten(),                   # (?, 2048)
        nn.Linear(2048, 625),
        nn.ReLU(inplace=True),
        Dropout(dropout),
        nn.Linear(625, 10),
    )
    lecture_init(model)
    return model
