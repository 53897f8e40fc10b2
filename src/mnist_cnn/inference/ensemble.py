"""Ensembles: several checkpoints whose softmax outputs are averaged, and the statistics that
choose the members (training them is mnist_cnn.training.ensemble's)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..data.dataset import Split
from ..errors import MnistCnnError
from ..models.checkpoint import CheckpointMeta, load_checkpoint
from ..runtime.device import Runtime
from .evaluation import CPU, Metrics, metrics_from_proba, predict_proba


def load_members(paths: Sequence[str | os.PathLike], device: torch.device | str = "cpu"
                 ) -> list[tuple[nn.Module, CheckpointMeta]]:
    """Load checkpoints that can be averaged: the same classes, in the same order. A network
    calibrated with a temperature answers with calibrated probabilities (calibration.py)."""
    from .calibration import Calibrated

    if not paths:
        raise MnistCnnError("an ensemble needs at least one checkpoint")
    members = [load_checkpoint(p, device=device) for p in paths]
    members = [(model if meta.temperature is None else Calibrated(model, meta.temperature), meta)
               for model, meta in members]
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
        if not bool(torch.isfinite(p).all()):
            raise MnistCnnError(f"{path}: {NOT_FINITE}")
        probs.append(p)
        members.append((str(path), metrics_from_proba(p, split.labels)))
    return EnsembleReport(members, metrics_from_proba(average_probabilities(probs), split.labels))


def member_probabilities(paths: Sequence[str | os.PathLike], split: Split, batch_size: int = 1000,
                         runtime: Runtime = CPU) -> list[torch.Tensor]:
    """Each member's softmax outputs on `split`, one tensor (N, classes) per member."""
    return [predict_proba(model, split.images, batch_size, runtime)
            for model, _ in load_members(paths, runtime.device)]


def disagreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """The share of images two members (their probabilities) classify differently."""
    return float((a.argmax(1) != b.argmax(1)).float().mean())


def shared_errors(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor) -> int:
    """Images both members get wrong: no average of the two can fix those but by luck."""
    return int(((a.argmax(1) != labels) & (b.argmax(1) != labels)).sum())


@dataclass
class GreedyOrder:
    order: list[int]  # members in the order greedy selection added them
    errors: list[int]  # the ensemble's errors with the first k + 1 of them
    losses: list[float]  # its mean negative log-likelihood, likewise


def greedy_order(probs: Sequence[torch.Tensor], labels: torch.Tensor) -> GreedyOrder:
    """Forward selection without replacement: start from the best member, then add whichever
    member leaves the averaged ensemble the fewest errors (ties: the lowest loss). What each
    added member is worth, for the benchmark's table; the members kept are `keep_members`'.
    """
    def score(members: list[int]) -> tuple[int, float]:
        m = metrics_from_proba(average_probabilities([probs[i] for i in members]), labels)
        return round((1 - m.accuracy) * m.count), m.loss

    order: list[int] = []
    scores: list[tuple[int, float]] = []
    left = list(range(len(probs)))
    while left:
        best = min(left, key=lambda i: score(order + [i]))
        order.append(best)
        left.remove(best)
        scores.append(score(order))
    return GreedyOrder(order, [e for e, _ in scores], [loss for _, loss in scores])


@dataclass
class Verdict:
    errors: int  # the member's own errors
    worse: int  # images the best member gets right and this one wrong
    better: int  # and the other way round
    p_value: float  # of `worse` against `better` by chance (one-sided, exact binomial)
    kept: bool


def keep_members(probs: Sequence[torch.Tensor], labels: torch.Tensor,
                 level: float = 0.05) -> list[Verdict]:
    """Keep every member but those significantly worse than the best one (exact McNemar test on
    the images where the two differ, one-sided, at `level`).

    Meant for the validation split: choosing on the test split would make its score a
    training result. Why not keep the prefix greedy selection likes best: near 99.7%, 5,000
    validation images rank ensembles by one or two images, which are mostly ambiguous digits,
    so that prefix follows noise (measured: it kept 2 of 7 members, 99.71% on the test split,
    against 99.81% for all 7, README). A member that is truly worse still stands out.
    """
    from scipy.stats import binomtest  # imported here: scipy.stats takes most of a second

    wrong = [p.argmax(1) != labels for p in probs]
    best = min(range(len(probs)), key=lambda i: int(wrong[i].sum()))
    verdicts = []
    for w in wrong:
        worse, better = int((w & ~wrong[best]).sum()), int((~w & wrong[best]).sum())
        p_value = float(binomtest(worse, worse + better, alternative="greater").pvalue
                        if worse else 1.0)
        verdicts.append(Verdict(int(w.sum()), worse, better, p_value, p_value >= level))
    return verdicts


def format_verdicts(names: Sequence[str], verdicts: Sequence[Verdict]) -> str:
    """One line per member: its validation errors, against the best member, kept or not."""
    lines = ["members on the validation split (left out only if significantly worse than the "
             "best member, exact McNemar test at 5%):"]
    for name, v in zip(names, verdicts):
        verdict = "kept" if v.kept else f"left out, p = {v.p_value:.2g}"
        lines.append(f"  {name}: {v.errors} errors; against the best member {v.worse} worse, "
                     f"{v.better} better ({verdict})")
    return "\n".join(lines)


def select_members(paths: Sequence[str | os.PathLike], val: Split, batch_size: int = 1000,
                   runtime: Runtime = CPU) -> list[Verdict]:
    """keep_members for `paths` on the validation split `val`."""
    return keep_members(member_probabilities(paths, val, batch_size, runtime), val.labels)


def disagreement_table(names: Sequence[str], probs: Sequence[torch.Tensor], labels: torch.Tensor
                       ) -> str:
    """A Markdown table: above the diagonal the disagreement in %, below it the shared errors,
    on it each member's own errors."""
    header = "| | " + " | ".join(f"{k + 1}" for k in range(len(names))) + " |"
    lines = [header, "|---" * (len(names) + 1) + "|"]
    for i, name in enumerate(names):
        cells = []
        for j in range(len(names)):
            if i == j:
                cells.append(f"**{int((probs[i].argmax(1) != labels).sum())}**")
            elif j > i:
                cells.append(f"{100 * disagreement(probs[i], probs[j]):.2f}%")
            else:
                cells.append(str(shared_errors(probs[i], probs[j], labels)))
        lines.append(f"| {i + 1}. {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
