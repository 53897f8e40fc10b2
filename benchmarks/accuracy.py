"""Accuracy beyond one network: a diverse ensemble, its members' disagreement, and what each added
member is worth.

Trains the members that are missing under --runs (resumable member by member: rerunning only
prints), then prints, the environment first:
- each member: validation and test accuracy, training time (per epoch and in all), parameters;
- the disagreement table on the validation split (share of images two members classify
  differently, and the errors they share);
- which members are kept: all but those significantly worse than the best one on the
  validation split (ensemble.keep_members); the test split is only reported;
- accuracy against the number of members, in the order greedy selection adds them on the
  validation split, and the accuracy of the kept members averaged.
With --lecture, also the lecture's deep CNN without and with augmentation, for comparison.

Usage: python benchmarks/accuracy.py [--runs runs/accuracy] [--epochs 15] [--threads 1]
           [--member best:elastic --member wide:standard ...] [--lecture]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mnist_cnn import build_model, evaluate, load_checkpoint, load_dataset, recipe_for, setup, train
from mnist_cnn.inference import plots
from mnist_cnn.inference.ensemble import (
    average_probabilities,
    disagreement_table,
    format_verdicts,
    greedy_order,
    keep_members,
    member_probabilities,
)
from mnist_cnn.inference.evaluation import metrics_from_proba
from mnist_cnn.models.checkpoint import read_checkpoint
from mnist_cnn.runtime.environment import format_environment
from mnist_cnn.training.ensemble import member_recipes, train_recipes
from mnist_cnn.training.loop import CHECKPOINT_NAME

# Three seeds each of three networks that see the digit differently: as written (best), deskewed
# (upright) and width-normalised (widthnorm). Seeds, widths, architectures (wide, five) and
# augmentation presets made members that share most of their errors (README, "Diverse ensembles").
DEFAULT_MEMBERS = tuple(f"{model}:standard:{seed}" for model in ("best", "upright", "widthnorm")
                        for seed in range(3))


def train_seconds(path: Path) -> list[float]:
    return [r["train_seconds"] for r in read_checkpoint(path)[1].history]


def ensemble_accuracy(probs, members, labels) -> float:
    return metrics_from_proba(average_probabilities([probs[k] for k in members]), labels).accuracy


def lecture_rows(data, runs: Path, threads: int | None) -> None:
    print("\n| network | test accuracy | training time | parameters |")
    print("|---|---|---|---|")
    for name, recipe in (("deep", recipe_for("deep")),
                         ("deep --augment", recipe_for("deep").replace(augment="standard"))):
        out = runs / name.replace(" --", "-")
        runtime = setup("auto", recipe.precision, threads, tune_allocator=True)
        checkpoint = out / CHECKPOINT_NAME
        train(build_model(recipe), data, recipe, runtime, out, resume=checkpoint.is_file(),
              progress=False)
        model, _ = load_checkpoint(checkpoint)
        params = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {evaluate(model, data.test).accuracy:.4f} | "
              f"{sum(train_seconds(checkpoint)) / 60:.1f} min | {params:,} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", default="runs/accuracy")
    parser.add_argument("--member", action="append", metavar="MODEL[:AUGMENT[:SEED]]",
                        help=f"a member (repeat; default: {' '.join(DEFAULT_MEMBERS)})")
    parser.add_argument("--epochs", type=float, help="every member's epochs (default: its recipe)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: follow the load)")
    parser.add_argument("--lecture", action="store_true", help="also the lecture's deep CNN")
    parser.add_argument("--mistakes", metavar="PNG",
                        help="also draw the kept ensemble's mistakes on the test split there")
    args = parser.parse_args()
    print(format_environment(), "\n", flush=True)
    runs = Path(args.runs)
    data = load_dataset("mnist")

    overrides = {"epochs": args.epochs} if args.epochs else {}
    recipes = member_recipes(args.member or DEFAULT_MEMBERS, **overrides)
    runtime = setup("auto", recipes[0].precision, args.threads, tune_allocator=True)
    paths = train_recipes(recipes, data, runtime, runs / "ensemble", progress=False)
    names = [p.parent.name for p in paths]
    val = member_probabilities(paths, data.val, runtime=runtime)
    test = member_probabilities(paths, data.test, runtime=runtime)

    print(f"\nmembers ({data.name}: {len(data.val)} validation, {len(data.test)} test images)\n")
    print("| member | epochs | validation | test | time per epoch | time in all | parameters |")
    print("|---|---|---|---|---|---|---|")
    for k, (name, recipe, path) in enumerate(zip(names, recipes, paths)):
        seconds = train_seconds(path)
        params = sum(p.numel() for p in build_model(recipe).parameters())
        print(f"| {k + 1}. {name} | {recipe.epochs:g} | "
              f"{metrics_from_proba(val[k], data.val.labels).accuracy:.4f} | "
              f"{metrics_from_proba(test[k], data.test.labels).accuracy:.4f} | "
              f"{sum(seconds) / len(seconds):.0f} s | {sum(seconds) / 60:.1f} min | {params:,} |")

    print("\ndisagreement on the validation split: above the diagonal the share of images two "
          "members classify differently, below it the errors they share, on it each member's "
          "errors\n")
    print(disagreement_table(names, val, data.val.labels))

    verdicts = keep_members(val, data.val.labels)
    kept = [k for k, v in enumerate(verdicts) if v.kept]
    print("\n" + format_verdicts(names, verdicts))

    greedy = greedy_order(val, data.val.labels)
    print("\naccuracy against the number of members, added in greedy order on the validation "
          "split\n")
    print("| members | added | validation | test | training time in all |")
    print("|---|---|---|---|---|")
    minutes = 0.0
    for k, i in enumerate(greedy.order):
        minutes += sum(train_seconds(paths[i])) / 60
        print(f"| {k + 1} | {names[i]} | {1 - greedy.errors[k] / len(data.val):.4f} | "
              f"{ensemble_accuracy(test, greedy.order[:k + 1], data.test.labels):.4f} | "
              f"{minutes:.1f} min |")
    print(f"\nthe {len(kept)} kept members averaged: validation "
          f"{ensemble_accuracy(val, kept, data.val.labels):.4f}, test "
          f"{ensemble_accuracy(test, kept, data.test.labels):.4f}, trained in "
          f"{sum(sum(train_seconds(paths[k])) for k in kept) / 60:.1f} min in all")

    if args.mistakes:
        averaged = average_probabilities([test[k] for k in kept])
        plots.save(plots.mistakes(data.test.images, data.test.labels, averaged, data.classes),
                   args.mistakes)
        print(f"\nthe kept ensemble's mistakes: {args.mistakes}")

    if args.lecture:
        lecture_rows(data, runs, args.threads)


if __name__ == "__main__":
    main()
