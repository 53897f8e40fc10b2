"""Ensembles: several checkpoints whose softmax outputs are averaged."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

from . import distributed
from .checkpoint import CheckpointMeta, load_checkpoint
from .data import Dataset, Split
from .device import Runtime
from .errors import MnistCnnError
from .evaluation import CPU, Metrics, metrics_from_proba, predict_proba
from .models import build_model
from .recipes import Recipe
from .training import CHECKPOINT_NAME, train


def load_members(paths: Sequence[str | os.PathLike], device: torch.device | str = "cpu"
                 ) -> list[tuple[nn.Module, CheckpointMeta]]:
    """Load checkpoints that can be averaged: the same classes, in the same order."""
    if not paths:
        raise MnistCnnError("an ensemble needs at least one checkpoint")
    members = [load_checkpoint(p, device=device) for p in paths]
    classes = [meta.class_names() for _, meta in members]
    for path, c in zip(paths, classes):
        if c != classes[0]:
            raise MnistCnnError(f"{path}: its classes {list(c)} differ from {paths[0]}'s "
                                f"{list(classes[0])}; members must be trained on one dataset")
    return members


def average_probabilities(member_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The ensemble's prediction: the mean of the members' softmax outputs."""
    return torch.stack(list(member_probs)).mean(0)


NOT_FINITE = "the network's outputs are not finite numbers: its weights are damaged"


def ensemble_proba(models: Sequence[nn.Module], images: torch.Tensor, batch_size: int = 1000,
                   runtime: Runtime = CPU) -> torch.Tensor:
    """The members' averaged softmax (N, classes); an error, never NaN, when a network's finite
    but huge weights overflow."""
    probabilities = average_probabilities([predict_proba(m, images, batch_size, runtime)
                                           for m in models])
    if not bool(torch.isfinite(probabilities).all()):
        raise MnistCnnError(NOT_FINITE)
    return probabilities


@dataclass
class EnsembleReport:
    members: list[tuple[str, Metrics]]
    ensemble: Metrics


def evaluate_ensemble(paths: Sequence[str | os.PathLike], split: Split, batch_size: int = 1000,
                      runtime: Runtime = CPU) -> EnsembleReport:
    """Each member's metrics and the softmax-averaged ensemble's, from one pass per member."""
    probs, members = [], []
    for path, (model, _meta) in zip(paths, load_members(paths, runtime.device)):
        p = predict_proba(model, split.images, batch_size, runtime)
        probs.append(p)
        members.append((str(path), metrics_from_proba(p, split.labels)))
    return EnsembleReport(members, metrics_from_proba(average_probabilities(probs), split.labels))


MEMBERS_WAIT = timedelta(days=2)  # how long the first rank done waits for the others


def train_members(recipe: Recipe, data: Dataset, runtime: Runtime, out_dir: str | os.PathLike,
                  members: int, progress: bool = True,
                  log: Callable[[str], None] = print, overwrite: bool = False) -> list[Path]:
    """Train `members` networks with seeds recipe.seed, recipe.seed + 1, ... into member-K/.

    Resumable member by member: finished members are skipped, an interrupted one resumes;
    with `overwrite`, every member starts afresh instead.

    Under torchrun the members are spread over the ranks (member k on rank k % world size), each
    trained as a single process would, without gradient sync, so the members are those of a
    sequential run; all ranks return once every member is trained.
    """
    alone = dataclasses.replace(runtime, rank=0, world_size=1)
    if runtime.world_size > 1:
        rank_log = log

        def log(line: str) -> None:
            rank_log(f"rank {runtime.rank}: {line}")

    paths = []
    for k in range(members):
        member_recipe = recipe.replace(seed=recipe.seed + k)
        member_dir = Path(out_dir) / f"member-{k}"
        checkpoint = member_dir / CHECKPOINT_NAME
        paths.append(checkpoint)
        if k % runtime.world_size != runtime.rank:
            continue
        log(f"member {k + 1}/{members} (seed {member_recipe.seed}) in {member_dir}")
        train(build_model(member_recipe), data, member_recipe, alone, member_dir,
              resume=checkpoint.is_file() and not overwrite,
              progress=progress and runtime.is_main, log=log, overwrite=overwrite)
    # ranks may finish a whole member apart; a rank that dies ends the group (torchrun) sooner
    distributed.barrier(runtime, wait=MEMBERS_WAIT)
    return paths
