"""Ensembles: several checkpoints whose softmax outputs are averaged."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .checkpoint import load_checkpoint
from .device import Runtime
from .errors import MnistCnnError
from .evaluation import CPU, predict_proba


def load_members(paths: Sequence[str | os.PathLike], device: torch.device | str = "cpu"
                 ) -> list[tuple[nn.Module, dict[str, Any]]]:
    """Load checkpoints that can be averaged: the same classes, in the same order."""
    if not paths:
        raise MnistCnnError("an ensemble needs at least one checkpoint")
    members = [load_checkpoint(p, device=device) for p in paths]
    classes = [tuple(meta.get("classes", [])) for _, meta in members]
    for path, c in zip(paths, classes):
        if c != classes[0]:
            raise MnistCnnError(f"{path}: its classes {list(c)} differ from {paths[0]}'s "
                                f"{list(classes[0])}; members must be trained on one dataset")
    return members


def average_probabilities(member_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The ensemble's prediction: the mean of the members' softmax outputs."""
    return torch.stack(list(member_probs)).mean(0)


def ensemble_proba(models: Sequence[nn.Module], images: torch.Tensor, batch_size: int = 1000,
                   runtime: Runtime = CPU) -> torch.Tensor:
    return average_probabilities([predict_proba(m, images, batch_size, runtime) for m in models])
