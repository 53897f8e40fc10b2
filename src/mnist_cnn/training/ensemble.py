"""Ensembles trained: members of one recipe with successive seeds, or diverse members
("MODEL[:AUGMENT[:SEED]]"), each in its own folder, resumable member by member, spread over
torchrun's ranks. Averaging their answers is mnist_cnn.inference.ensemble's."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from ..data.dataset import Dataset
from ..errors import MnistCnnError
from ..models.recipes import Recipe
from ..models.registry import build_model, recipe_for
from ..runtime import distributed
from ..runtime.device import Runtime
from .augment import PRESETS as AUGMENT_PRESETS
from .loop import CHECKPOINT_NAME, train

MEMBERS_WAIT = timedelta(days=2)  # how long the first rank done waits for the others


def train_members(recipe: Recipe, data: Dataset, runtime: Runtime, out_dir: str | os.PathLike,
                  members: int, progress: bool = True,
                  log: Callable[[str], None] = print, overwrite: bool = False) -> list[Path]:
    """Train `members` networks with seeds recipe.seed, recipe.seed + 1, ... into member-K/.

    Resumable member by member (see train_recipes).
    """
    recipes, names = seed_members(recipe, members)
    return train_recipes(recipes, data, runtime, out_dir, progress, log, overwrite, names)


def seed_members(recipe: Recipe, members: int) -> tuple[list[Recipe], list[str]]:
    """`members` copies of `recipe` with seeds recipe.seed, recipe.seed + 1, ... and their
    folder names, member-0, member-1, ..."""
    return ([recipe.replace(seed=recipe.seed + k) for k in range(members)],
            [f"member-{k}" for k in range(members)])


def train_recipes(recipes: Sequence[Recipe], data: Dataset, runtime: Runtime,
                  out_dir: str | os.PathLike, progress: bool = True,
                  log: Callable[[str], None] = print, overwrite: bool = False,
                  names: Sequence[str] | None = None) -> list[Path]:
    """Train one member per recipe into out_dir/NAME/ (default names: member_name(recipe)).

    Resumable member by member: finished members are skipped, an interrupted one resumes;
    with `overwrite`, every member starts afresh instead. Only the training and validation
    splits are read: choosing members is the validation split's job (select_members).

    Under torchrun the members are spread over the ranks (member k on rank k % world size), each
    trained as a single process would, without gradient sync, so the members are those of a
    sequential run; all ranks return once every member is trained.
    """
    names = list(names) if names is not None else [member_name(r) for r in recipes]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise MnistCnnError(f"members {', '.join(twice)} are listed twice: give them other seeds")
    alone = dataclasses.replace(runtime, rank=0, world_size=1)
    if runtime.world_size > 1:
        rank_log = log

        def log(line: str) -> None:
            rank_log(f"rank {runtime.rank}: {line}")

    paths = []
    for k, (member_recipe, name) in enumerate(zip(recipes, names)):
        member_dir = Path(out_dir) / name
        checkpoint = member_dir / CHECKPOINT_NAME
        paths.append(checkpoint)
        if k % runtime.world_size != runtime.rank:
            continue
        log(f"member {k + 1}/{len(recipes)} ({member_recipe.model}, augment "
            f"{member_recipe.augment}, seed {member_recipe.seed}) in {member_dir}")
        train(build_model(member_recipe), data, member_recipe, alone, member_dir,
              resume=checkpoint.is_file() and not overwrite,
              progress=progress and runtime.is_main, log=log, overwrite=overwrite)
    # ranks may finish a whole member apart; a rank that dies ends the group (torchrun) sooner
    distributed.barrier(runtime, wait=MEMBERS_WAIT)
    return paths


# --------------------------------------------------------------------------------------------
# Diverse members: "MODEL[:AUGMENT[:SEED]]", e.g. best:elastic or wide:standard:7


def member_name(recipe: Recipe) -> str:
    """A member's folder: what makes it differ from the others, so a changed list resumes."""
    return f"{recipe.model}-{recipe.augment}-seed{recipe.seed}"


def member_recipes(specs: Sequence[str], seed: int = 0, dataset: str = "mnist",
                   **overrides: Any) -> list[Recipe]:
    """Each spec's recipe: the model's own, with `overrides` (e.g. epochs) for every member, then
    the spec's augmentation preset and seed; members without a seed get seed + their index."""
    recipes = []
    for k, spec in enumerate(specs):
        parts = spec.split(":")
        if len(parts) > 3 or not parts[0]:
            raise MnistCnnError(f"member {spec!r}: expected MODEL[:AUGMENT[:SEED]], "
                                "e.g. best:elastic or wide:standard:7")
        changes = dict(overrides, seed=seed + k)
        if len(parts) > 1 and parts[1]:
            if parts[1] not in AUGMENT_PRESETS:
                raise MnistCnnError(f"member {spec!r}: unknown augmentation {parts[1]!r}; "
                                    f"choose one of {', '.join(AUGMENT_PRESETS)}")
            changes["augment"] = parts[1]
        if len(parts) > 2:
            if not parts[2].isdigit():
                raise MnistCnnError(f"member {spec!r}: the seed {parts[2]!r} is not a whole number")
            changes["seed"] = int(parts[2])
        recipes.append(recipe_for(parts[0], dataset).replace(**changes))
    return recipes
