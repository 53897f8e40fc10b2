"""The layers the networks are built from (the families' own input transforms are in views.py)."""

from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Module):
    """Inverted dropout whose mask comes from `torch.rand` rather than `bernoulli_`.

    Same distribution as nn.Dropout; on CPU, PyTorch's bernoulli_ costs about three times as much
    as rand, and in the deep CNN it was a quarter of each training step.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1 / (1 - self.p))
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def conv_block(c_in: int, c_out: int, dropout: float = 0.0) -> list[nn.Module]:
    """conv 3x3 SAME -> ReLU -> max-pool 2x2 SAME, computed as conv -> pool -> ReLU.

    ReLU and max-pooling commute (both are monotone), so pooling first gives identical numbers
    with a quarter of the ReLU work. ceil_mode=True is TF's SAME pooling (7x7 -> 4x4).
    """
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.ReLU(inplace=True),
    ]
    if dropout > 0:
        layers.append(Dropout(dropout))
    return layers


class FlattenNHWC(nn.Module):
    """Flatten in (H, W, C) order, as TensorFlow does: on channels-last activations this is a view,
    where nn.Flatten's (C, H, W) order costs a copy forwards and a layout change backwards."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)


def bn_block(c_in: int, c_out: int) -> list[nn.Module]:
    """conv 3x3 SAME -> max-pool 2x2 SAME -> batch norm -> ReLU.

    Normalising after the pooling touches a quarter of the values; the network learns the same.
    """
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class CentreCrop(nn.Module):
    """Keep the central size x size pixels. MNIST digits are scaled into a 20x20 box and centred
    by mass in the 28x28 frame, so the outer ring is nearly blank: 2 px of it hold 0.22% of the
    training set's ink. Cropping it inside the model keeps the input 28x28 everywhere else."""

    def __init__(self, size: int, image_size: int = 28):
        super().__init__()
        self.size, self.start = size, (image_size - size) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, self.start:self.start + self.size, self.start:self.start + self.size]

    def extra_repr(self) -> str:
        return f"size={self.size}"


class Standardize(nn.Module):
    """(x - mean) / std with fixed constants (MNIST's pixel mean and spread), so that the first
    layer, which has no batch norm, starts from zero-centred inputs."""

    def __init__(self, mean: float = 0.1307, std: float = 0.3081):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * (1 / self.std)


def conv5_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 5, padding=2, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]
