"""A recipe: a network's name and everything needed to train it. CLI flags override fields."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard, get_args

from ..errors import MnistCnnError
from .catalog import AUGMENT_PRESETS as PRESETS  # augment.PRESETS' names, without torch

# Each option's names, defined once: the recipe's types, its validation and the CLI's choices
# all come from these (augmentation presets are augment.PRESETS, which defines them).
Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["constant", "onecycle", "cosine"]
Precision = Literal["fp32", "bf16"]
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
PRECISIONS: tuple[str, ...] = get_args(Precision)


def is_precision(name: str) -> TypeGuard[Precision]:
    """Whether `name` is one of PRECISIONS (and so a Precision, to the type checker)."""
    return name in PRECISIONS


@dataclass(frozen=True)
class Recipe:
    model: str
    epochs: float = 15  # fractions train on the first part of the last epoch
    batch_size: int = 100
    optimizer: Optimizer = "adam"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    schedule: Schedule = "constant"
    warmup: float = 0.25  # onecycle: fraction of steps spent rising
    label_smoothing: float = 0.0
    dropout: float = 0.0  # probability of dropping (the lecture's keep_prob 0.7 is dropout 0.3)
    augment: str = "none"  # an augmentation preset (augment.PRESETS)
    precision: Precision = "fp32"  # bf16: autocast
    seed: int = 0
    eval_batch_size: int = 1000
    model_args: dict[str, Any] = field(default_factory=dict)
    # weight of a cross-entropy-to-uniform loss on synthetic non-digits (synthetic.outlier_pool),
    # so that the network is unsure of what looks like no digit (novelty.py); 0: none
    outlier_exposure: float = 0.0

    def __post_init__(self) -> None:
        self.validate()  # a recipe that exists is a valid one, however it was made

    def replace(self, **changes: Any) -> Recipe:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise MnistCnnError(f"unknown recipe fields: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)

    def validate(self) -> Recipe:
        self.check_types()
        checks = [
            (0 < self.epochs <= MAX_EPOCHS, f"epochs must be positive (at most {MAX_EPOCHS:,})"),
            (0 < self.batch_size <= MAX_BATCH, f"batch size must be positive (at most {MAX_BATCH:,})"),
            (self.lr > 0, "learning rate must be positive"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (0 < self.warmup < 1, "warmup must be in (0, 1)"),
            (0 <= self.label_smoothing < 1, "label smoothing must be in [0, 1)"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}"),
            (self.precision in PRECISIONS, f"unknown precision {self.precision!r}"),
            (self.augment in PRESETS, f"unknown augmentation preset {self.augment!r}"),
            (0 < self.eval_batch_size <= MAX_BATCH,
             f"evaluation batch size must be positive (at most {MAX_BATCH:,})"),
            (self.eps > 0, "eps must be positive"),
            (self.outlier_exposure >= 0, "outlier exposure must not be negative"),
            (self.weight_decay >= 0, "weight decay must not be negative"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (all(0 <= b < 1 for b in self.betas), "betas must be in [0, 1)"),
            (abs(self.seed) < SEEDS, "seed must be below 2**32"),
        ]
        for ok, message in checks:
            if not ok:
                raise MnistCnnError(f"recipe for {self.model}: {message}")
        return self

    def check_types(self) -> None:
        """JSON from a file can hold anything: a string batch size, a list for a rate."""
        wrong = [f for f in NUMBER_FIELDS if not is_number(getattr(self, f))]
        wrong += [f for f in INT_FIELDS
                  if not isinstance(getattr(self, f), int) or isinstance(getattr(self, f), bool)]
        wrong += [f for f in STR_FIELDS if not isinstance(getattr(self, f), str)]
        if not (isinstance(self.betas, tuple) and len(self.betas) == 2
                and all(is_number(b) for b in self.betas)):
            wrong.append("betas")
        if not (isinstance(self.model_args, dict) and all(isinstance(k, str) for k in self.model_args)):
            wrong.append("model_args")
        if wrong:
            raise MnistCnnError(f"recipe for {str(self.model)[:40]}: wrong type of "
                                f"{', '.join(wrong)}")


def is_number(x: Any) -> bool:
    """A finite int or float (JSON's integers have no size limit: 10**400 is no number here)."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float
        return False


MAX_EPOCHS = 100_000
# training derives per-epoch and per-step seeds as seed * 1_000_003 + step (training/loop.py),
# which torch's 64-bit generators must hold: 32-bit seeds leave ample room
SEEDS = 2 ** 32
MAX_BATCH = 2 ** 31  # far above any dataset's size; keeps 400-digit sizes out of messages
NUMBER_FIELDS = ("epochs", "lr", "eps", "weight_decay", "momentum", "warmup", "label_smoothing",
                 "dropout", "outlier_exposure")
INT_FIELDS = ("batch_size", "seed", "eval_batch_size")
STR_FIELDS = ("model", "optimizer", "schedule", "augment", "precision")
