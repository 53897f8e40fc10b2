"""Describing a network: each layer's output shape in the lecture's notation, and its parameters."""

from __future__ import annotations

import torch
from torch import nn


def layer_shapes(model: nn.Module, image_size: int = 28) -> list[tuple[str, tuple[int, ...]]]:
    """Each leaf layer's output shape for one image, in order of execution."""
    shapes: list[tuple[str, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(
        lambda mod, _inp, out, name=name: shapes.append((name, tuple(out.shape[1:]))))
        for name, m in model.named_modules() if not list(m.children())]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, image_size, image_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return shapes


def lecture_notation(shape: tuple[int, ...]) -> str:
    """(C, H, W) -> '(?, H, W, C)' as TensorFlow printed it; (F,) -> '(?, F)'."""
    dims = (*shape[1:], shape[0]) if len(shape) == 3 else shape
    return "(?, " + ", ".join(str(d) for d in dims) + ")"


def summary(model: nn.Module) -> str:
    lines = []
    for name, shape in layer_shapes(model):
        layer = model.get_submodule(name)
        params = sum(p.numel() for p in layer.parameters())
        lines.append(f"{name:>6}  {type(layer).__name__:<12} {lecture_notation(shape):<20} "
                     f"{params:>10,}")
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    header = f"{'layer':>6}  {'type':<12} {'output shape':<20} {'parameters':>10}"
    return "\n".join([header, *lines, f"total parameters: {total:,} (trainable {trainable:,})"])
