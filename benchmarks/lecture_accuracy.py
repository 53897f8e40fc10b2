"""The lecture's two networks, trained as the lecture trains them (15 epochs, Adam 1e-3, batch 100)
with several seeds each: the runs behind the accuracy claims. They take 20 to 50 minutes on 2
cores, too long for the test suite, so this script records them and a test checks the record.

Writes, under --results (benchmarks/results by default):
- lecture.json: each run's seed, precision, test accuracy and time, the recipes, the machine;
- lecture-simple.safetensors and lecture-deep.safetensors: seed 0's weights (no optimizer state),
  which tests/test_end_to_end.py evaluates on the MNIST test set to check the record in seconds.

Each run is a `mnist-cnn train` process of one thread, as many at once as there are cores: on 2
cores two one-thread runs get more done than one run of two threads.

Usage: python benchmarks/lecture_accuracy.py [--runs runs/lecture] [--results benchmarks/results]
           [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from mnist_cnn.data.dataset import Split, load_dataset
from mnist_cnn.files import write_atomically
from mnist_cnn.inference.evaluation import evaluate
from mnist_cnn.models.checkpoint import load_checkpoint, save_checkpoint
from mnist_cnn.models.registry import recipe_for
from mnist_cnn.runtime.environment import describe_environment, format_environment
from mnist_cnn.runtime.threads import cpu_count

# the simple CNN in the lecture's fp32; the deep one in bf16, half fp32's time where the CPU has
# bf16 instructions (tests/test_end_to_end.py says how many runs each claim needs)
RUNS = {"simple": [(seed, "fp32") for seed in range(6)],
        "deep": [(seed, "bf16") for seed in range(3)]}


def train(model: str, seed: int, precision: str, out: Path, data_dir: str | None) -> dict:
    """One run, or what an earlier one recorded in out (rerunning only records)."""
    if not (out / "test_metrics.json").exists():
        command = [sys.executable, "-m", "mnist_cnn", "train", "--model", model, "--seed",
                   str(seed), "--precision", precision, "--threads", "1", "--out", str(out),
                   "--no-progress", "--overwrite"]
        if data_dir:
            command += ["--data-dir", data_dir]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{model} seed {seed}: {done.stderr.strip().splitlines()[-1]}")
    accuracy = json.loads((out / "test_metrics.json").read_text())["accuracy"]
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = sum(epoch["train_seconds"] for epoch in epochs)
    print(f"{model} seed {seed} {precision}: test accuracy {accuracy:.4f} after {len(epochs)} "
          f"epochs ({seconds:.0f} s of training)", flush=True)
    return {"seed": seed, "precision": precision, "epochs": len(epochs),
            "test_accuracy": accuracy, "train_seconds": round(seconds, 1)}


def keep_weights(source: Path, target: Path, test: Split) -> float:
    """Write the checkpoint without what only resuming needs (optimizer and RNG state); its test
    accuracy in fp32, as evaluate and predict run it (training measured bf16 runs in bf16)."""
    model, meta = load_checkpoint(source)
    kept = meta.to_dict()
    kept.pop("optimizer", None)
    save_checkpoint(target, model, kept)
    return evaluate(model.eval(), test).accuracy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/lecture"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--data-dir", help="where MNIST is (default: as mnist-cnn finds it)")
    args = parser.parse_args(argv)
    env = describe_environment()
    print(format_environment(env), flush=True)
    jobs = [(model, seed, precision) for model, runs in RUNS.items() for seed, precision in runs]
    jobs.sort(key=lambda job: job[0] != "deep")  # the longest first: the cores finish together

    def run(job: tuple[str, int, str]) -> dict:
        model, seed, precision = job
        return train(model, seed, precision, args.runs / f"{model}-{seed}-{precision}",
                     args.data_dir)

    with ThreadPoolExecutor(max(1, min(cpu_count(), len(jobs)))) as pool:
        results = list(pool.map(run, jobs))
    record: dict = {"cpu": env["cpu"], "torch": torch.__version__,
                    "date": time.strftime("%Y-%m-%d"), "recipes": {}, "runs": {}}
    for (model, _, _), result in zip(jobs, results):
        record["runs"].setdefault(model, []).append(result)
    for runs in record["runs"].values():
        runs.sort(key=lambda run: run["seed"])
    args.results.mkdir(parents=True, exist_ok=True)
    test = load_dataset("mnist", data_dir=args.data_dir).test
    record["kept_fp32_test_accuracy"] = {}
    for model, runs in RUNS.items():
        record["recipes"][model] = recipe_for(model).to_dict()
        seed, precision = runs[0]
        record["kept_fp32_test_accuracy"][model] = keep_weights(
            args.runs / f"{model}-{seed}-{precision}" / "last.safetensors",
            args.results / f"lecture-{model}.safetensors", test)
        accuracies = [r["test_accuracy"] for r in record["runs"][model]]
        print(f"{model}: mean test accuracy {sum(accuracies) / len(accuracies):.4f} over "
              f"{len(accuracies)} runs")
    # the record the tests read: never half written
    write_atomically(args.results / "lecture.json", (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote {args.results / 'lecture.json'} and seed 0's weights beside it")


if __name__ == "__main__":
    main()
