"""Recipes: every option's names come from one table, and a recipe is checked when it is made."""

import typing

import pytest

from mnist_cnn import cli
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.models.recipes import OPTIMIZERS, PRECISIONS, SCHEDULES, Recipe
from mnist_cnn.training.augment import PRESETS


@pytest.mark.parametrize("field, value, message", [
    ("optimizer", "adan", "unknown optimizer 'adan'"),
    ("schedule", "linear", "unknown schedule 'linear'"),
    ("precision", "fp16", "unknown precision 'fp16'"),
    ("augment", "elastik", "unknown augmentation preset 'elastik'"),
    ("batch_size", 0, "batch size must be positive"),
    ("lr", "0.1", "wrong type of lr"),
])
def test_a_bad_recipe_cannot_be_made(field, value, message):
    with pytest.raises(MnistCnnError, match=message):
        Recipe(model="simple", **{field: value})
    with pytest.raises(MnistCnnError, match=message):  # nor reached by replacing a field
        Recipe(model="simple").replace(**{field: value})
    with pytest.raises(MnistCnnError, match=message):  # nor read from a file
        Recipe.from_dict({**Recipe(model="simple").to_dict(), field: value})


def test_the_types_the_tables_and_the_command_line_agree():
    hints = typing.get_type_hints(Recipe)
    assert typing.get_args(hints["optimizer"]) == OPTIMIZERS
    assert typing.get_args(hints["schedule"]) == SCHEDULES
    assert typing.get_args(hints["precision"]) == PRECISIONS
    train = cli.build_parser()._subparsers._group_actions[0].choices["train"]
    choices = {a.dest: tuple(a.choices) for a in train._actions if a.choices}
    assert choices["optimizer"] == OPTIMIZERS and choices["schedule"] == SCHEDULES
    assert choices["precision"] == PRECISIONS and choices["augment"] == tuple(PRESETS)
    for name in (*OPTIMIZERS, *SCHEDULES):  # every name in a table makes a valid recipe
        field = "optimizer" if name in OPTIMIZERS else "schedule"
        assert getattr(Recipe(model="simple", **{field: name}), field) == name
