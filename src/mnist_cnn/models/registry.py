"""Every network, registered by name with its default recipe (catalog.py says what each is).

Models take float images in [0, 1], shape (N, 1, 28, 28); `as_input` makes them from the uint8
tensors the dataset holds. Any further normalisation is a layer of the model itself, so that
exported and served models cannot drift from training.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import MnistCnnError
from .catalog import NETWORKS
from .recipes import Recipe


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[..., nn.Module]
    recipe: Recipe
    description: str
    # where a dataset needs other network arguments than the recipe's: {dataset: model_args}
    dataset_model_args: dict[str, dict] = field(default_factory=dict)


MODELS: dict[str, ModelEntry] = {}


def register(recipe: Recipe, dataset_model_args: dict[str, dict] | None = None):
    """Register the decorated builder as the network its default recipe names (`recipe.model`:
    the name is written once), after checking the recipe as a user's would be checked."""
    name = recipe.model
    recipe.validate()

    def decorator(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:  # a second network under one name would replace the first unseen
            raise ValueError(f"a model named {name!r} is registered already")
        if name not in NETWORKS:  # the command line knows the networks from the catalog
            raise ValueError(f"a model named {name!r} is missing from catalog.NETWORKS")
        MODELS[name] = ModelEntry(name, build, recipe, NETWORKS[name].description,
                                  dataset_model_args or {})
        return build
    return decorator


def model_entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise MnistCnnError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def recipe_for(name: str, dataset: str = "mnist") -> Recipe:
    """The default recipe of a registered network (the lecture's settings for simple and deep),
    with any adjustment the dataset needs."""
    entry = model_entry(name)
    changes = entry.dataset_model_args.get(dataset)
    if changes is None:
        return entry.recipe
    return entry.recipe.replace(model_args={**entry.recipe.model_args, **changes})


def build_model(name_or_recipe: str | Recipe, **overrides) -> nn.Module:
    """A freshly initialised network; its weights come from the recipe's seed, so the same recipe
    always gives the same starting point. The caller's random state is left as it was."""
    recipe = recipe_for(name_or_recipe) if isinstance(name_or_recipe, str) else name_or_recipe
    args = {"dropout": recipe.dropout, **recipe.model_args, **overrides}
    build = model_entry(recipe.model).build
    with torch.random.fork_rng(devices=[]):  # layers draw their initial weights from torch's RNG
        torch.manual_seed(recipe.seed)
        return build(**args)


def as_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 1, 28, 28) -> float32 in [0, 1]; float input is passed through unchanged."""
    if images.dtype == torch.uint8:
        return images.float().mul_(1 / 255)
    return images.float()


# Each family registers its networks when imported, in the catalogue's order
FAMILIES = ("lecture", "fast", "best", "views")
for _family in FAMILIES:
    importlib.import_module(f".{_family}", __package__)
# listed in the catalogue's order, whichever family registered first
_registered = dict(MODELS)
MODELS.clear()
MODELS.update({name: _registered[name] for name in NETWORKS if name in _registered})
