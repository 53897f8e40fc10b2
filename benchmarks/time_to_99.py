"""Time to a 99% MNIST model: the `fast` recipe trained with N seeds on this machine.

For each seed: training time, evaluation time (10,000 test images) and test accuracy; then the
median training time, the mean, minimum and maximum accuracy and the share of seeds below 99%.
Data loading is timed once, separately; Python start-up is excluded. With --process, also times
whole `mnist-cnn train --model fast` processes (start-up, data loading, training, evaluation,
checkpoint), as a user would see them.

Usage: python benchmarks/time_to_99.py [--seeds 20] [--model fast] [--device auto] [--process 3]
           [--threads N] [--precision fp32|bf16]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mnist_cnn import build_model, evaluate, load_dataset, recipe_for, setup, train
from mnist_cnn.runtime.environment import format_environment


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--model", default="fast")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, help="a fixed thread count (default: follows load)")
    parser.add_argument("--process", type=int, default=3, help="whole-CLI runs to time (0: none)")
    args = parser.parse_args()
    print(format_environment(), "\n", flush=True)

    started = time.perf_counter()
    data = load_dataset("mnist")
    load_seconds = time.perf_counter() - started
    recipe = recipe_for(args.model)
    if args.precision:
        recipe = recipe.replace(precision=args.precision)
    runtime = setup(args.device, recipe.precision, args.threads, tune_allocator=True)
    print(f"{args.model}: {recipe.epochs} epoch(s), batch {recipe.batch_size}, {recipe.optimizer} "
          f"{recipe.schedule} lr {recipe.lr}, {runtime.precision} on {runtime.device}")
    print(f"data loading (verify + decompress into memory): {load_seconds:.2f} s")

    # one short warm-up so the first seed does not pay for one-time kernel set-up
    warm = recipe.replace(epochs=0.05)
    train(build_model(warm), data, warm, runtime, progress=False, log=lambda s: None)

    times, accuracies = [], []
    print(f"{'seed':>4} {'train s':>8} {'eval s':>7} {'test accuracy':>14}")
    for seed in range(args.seeds):
        r = recipe.replace(seed=seed)
        model = build_model(r)
        result = train(model, data, r, runtime, progress=False, log=lambda s: None)
        started = time.perf_counter()
        accuracy = evaluate(model, data.test, 1000, runtime).accuracy
        eval_seconds = time.perf_counter() - started
        times.append(result.train_seconds)
        accuracies.append(accuracy)
        print(f"{seed:>4} {result.train_seconds:>8.2f} {eval_seconds:>7.2f} {accuracy:>14.4f}",
              flush=True)
    print(f"median training time {statistics.median(times):.2f} s; test accuracy mean "
          f"{statistics.mean(accuracies):.4f}, min {min(accuracies):.4f}, max {max(accuracies):.4f}"
          f" over {args.seeds} seeds; {sum(a < 0.99 for a in accuracies)} of {args.seeds} seeds "
          f"below 99% ({'threads ' + str(args.threads) if args.threads else 'threads follow load'},"
          f" {runtime.precision})")

    if args.process:
        cli = Path(sys.executable).with_name("mnist-cnn")
        walls = []
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.process):
                started = time.perf_counter()
                command = [str(cli), "train", "--model", args.model, "--out", f"{tmp}/{i}",
                           "--no-progress", "--device", args.device, "--seed", str(i)]
                if args.threads:
                    command += ["--threads", str(args.threads)]
                if args.precision:
                    command += ["--precision", args.precision]
                subprocess.run(command, check=True, capture_output=True)
                walls.append(time.perf_counter() - started)
        print(f"whole `mnist-cnn train --model {args.model}` process: median "
              f"{statistics.median(walls):.2f} s over {args.process} runs "
              f"({', '.join(f'{w:.2f}' for w in walls)})")


if __name__ == "__main__":
    main()
