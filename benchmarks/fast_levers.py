"""What each lever of the `fast` recipe is worth: the recipe with one thing changed at a time.

For every variant: median training time over the seeds, its ratio to the recipe's, and the test
accuracy (mean and min). Seeds go round-robin over the variants, so a slow minute on this shared
machine slows all of them alike.

Usage: python benchmarks/fast_levers.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

from mnist_cnn import build_model, evaluate, load_dataset, recipe_for, setup, train
from mnist_cnn.runtime.environment import format_environment

# name -> (recipe changes, runtime changes); model_args replace the recipe's as a whole
VARIANTS: dict[str, tuple[dict, dict]] = {
    "the recipe": ({}, {}),
    "no 24x24 crop": ({"model_args": {"crop": 28}}, {}),
    "fp32 (no bf16 autocast)": ({"precision": "fp32"}, {}),
    "NCHW (not channels-last)": ({}, {"channels_last": False}),
    "batch 128": ({"batch_size": 128}, {}),
    "batch 512": ({"batch_size": 512}, {}),
    "constant lr 1e-3 (no one-cycle)": ({"schedule": "constant", "lr": 1e-3}, {}),
    "no label smoothing": ({"label_smoothing": 0.0}, {}),
    "0.7 epoch": ({"epochs": 0.7}, {}),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print(format_environment(), "\n", flush=True)

    data = load_dataset("mnist")
    base = recipe_for("fast")
    runtimes = {p: setup("cpu", p, tune_allocator=True) for p in ("fp32", "bf16")}
    warm = base.replace(epochs=0.05)
    train(build_model(warm), data, warm, runtimes[warm.precision], progress=False, log=lambda s: None)

    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    accuracies: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for seed in range(args.seeds):
        for name, (changes, runtime_changes) in VARIANTS.items():
            recipe = base.replace(seed=seed, **changes)
            runtime = dataclasses.replace(runtimes[recipe.precision], **runtime_changes)
            model = build_model(recipe)
            result = train(model, data, recipe, runtime, progress=False, log=lambda s: None)
            times[name].append(result.train_seconds)
            accuracies[name].append(evaluate(model, data.test, 1000, runtime).accuracy)
        print(f"seed {seed} done", flush=True)

    reference = statistics.median(times["the recipe"])
    print(f"\n`fast` levers, {args.seeds} seeds each ({base.epochs} epoch, batch {base.batch_size}, "
          f"lr {base.lr}, {base.precision})")
    print(f"{'variant':<34} {'train s':>8} {'vs recipe':>10} {'mean acc':>9} {'min acc':>8}")
    for name in VARIANTS:
        median = statistics.median(times[name])
        print(f"{name:<34} {median:>8.2f} {median / reference:>9.2f}x "
              f"{statistics.mean(accuracies[name]):>9.2%} {min(accuracies[name]):>8.2%}")


if __name__ == "__main__":
    main()
