"""Accuracy beyond the lecture: deep, deep with augmentation, the `best` network and its ensemble.

Trains what is missing under --runs (resumable: rerunning only prints), then prints test accuracy
(mean and spread over seeds for the ensemble members), training time on this machine and
parameter count.

Usage: python benchmarks/accuracy.py [--runs runs/accuracy] [--members 5]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from mnist_cnn import build_model, evaluate, load_checkpoint, load_dataset, recipe_for, setup, train
from mnist_cnn.checkpoint import read_checkpoint
from mnist_cnn.device import format_environment
from mnist_cnn.ensemble import evaluate_ensemble, train_members
from mnist_cnn.training import CHECKPOINT_NAME


def train_seconds(path: Path) -> float:
    return sum(r["train_seconds"] for r in read_checkpoint(path)[1].history)


def single_run(name: str, recipe, data, runs: Path) -> Path:
    out = runs / name
    runtime = setup("auto", recipe.precision, tune_allocator=True)
    checkpoint = out / CHECKPOINT_NAME
    train(build_model(recipe), data, recipe, runtime, out, resume=checkpoint.is_file(),
          progress=False)
    return checkpoint


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", default="runs/accuracy")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--skip", default="", help="comma-separated rows not to train: deep,deep-augment")
    args = parser.parse_args()
    print(format_environment(), "\n", flush=True)
    runs = Path(args.runs)
    data = load_dataset("mnist")
    rows = []

    best = recipe_for("best")
    runtime = setup("auto", best.precision, tune_allocator=True)
    members = train_members(best, data, runtime, runs / "best-ensemble", args.members,
                            progress=False)
    report = evaluate_ensemble(members, data.test)
    accs = [m.accuracy for _, m in report.members]
    params = sum(p.numel() for p in build_model(best).parameters())
    times = [train_seconds(p) for p in members]
    spread = f" (sd {statistics.stdev(accs):.4f}, min {min(accs):.4f}, max {max(accs):.4f})" \
        if len(accs) > 1 else ""
    rows.append(("best (one network)", f"{statistics.mean(accs):.4f}{spread}",
                 statistics.mean(times), params, len(accs)))
    rows.append((f"best, ensemble of {len(members)}", f"{report.ensemble.accuracy:.4f}", sum(times),
                 params * len(members), 1))

    skip = set(args.skip.split(","))
    for name, recipe in (("deep", recipe_for("deep")),
                         ("deep-augment", recipe_for("deep").replace(augment="standard"))):
        if name in skip:
            continue
        checkpoint = single_run(name, recipe, data, runs)
        model, _ = load_checkpoint(checkpoint)
        accuracy = evaluate(model, data.test).accuracy
        params = sum(p.numel() for p in model.parameters())
        rows.insert(0 if name == "deep" else 1,
                    (name.replace("-augment", " --augment"), f"{accuracy:.4f}",
                     train_seconds(checkpoint), params, 1))

    print("\n| network | test accuracy | training time (2 CPU cores) | parameters | seeds |")
    print("|---|---|---|---|---|")
    for name, acc, seconds, params, seeds in rows:
        print(f"| {name} | {acc} | {seconds / 60:.1f} min | {params:,} | {seeds} |")


if __name__ == "__main__":
    main()
