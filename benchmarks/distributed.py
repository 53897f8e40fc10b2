"""One process against two (torchrun + DistributedDataParallel) on the same cores, and an ensemble
trained on two ranks against one trained member after member.

Both sides use the same cores: one process with --threads C against torchrun with C // 2 threads
per process, so what shows is the cost (or gain) of splitting the work and averaging gradients.
For each seed: whole-command wall time, training time, images/s, validation and test accuracy,
and the training time to reach --target validation accuracy. The `fast` and `best` networks use
batch norm: two processes normalise each half-batch by its own statistics, one process by the
whole batch's (what SyncBatchNorm would compute), so the accuracies also compare those two.

The machine must be otherwise idle: a process with a fixed 2 threads slows down many times over
while another process keeps a core busy (device.ThreadTuner), far more than two processes of one
thread each do, so the load average is printed beside every run.

Usage: python benchmarks/distributed.py [--model fast] [--seeds 3] [--members 2]
                                         [--configs 1x2,2x1]   (processes x threads each)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import free_port

from mnist_cnn.runtime.environment import format_environment


def command(processes: int, threads: int, args: list[str]) -> list[str]:
    if processes == 1:
        launcher = [sys.executable, "-m", "mnist_cnn"]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                    str(processes), "--rdzv-backend", "c10d", "--rdzv-endpoint",
                    f"127.0.0.1:{free_port()}", "-m", "mnist_cnn"]
    return [*launcher, *args, "--threads", str(threads), "--no-progress"]


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - started


def train_run(processes: int, threads: int, model: str, seed: int, target: float,
              extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        wall = timed(command(processes, threads, ["train", "--model", model, "--seed", str(seed),
                                                  "--out", tmp, *extra]))
        history = [json.loads(line) for line in Path(tmp, "metrics.jsonl").read_text().splitlines()]
        test = json.loads(Path(tmp, "test_metrics.json").read_text())["accuracy"]
    seconds, to_target = 0.0, None
    for record in history:
        seconds += record["train_seconds"]
        if to_target is None and record["val_accuracy"] >= target:
            to_target = seconds
    images = sum(r["images_per_second"] * r["train_seconds"] for r in history)
    return {"wall": wall, "train": seconds, "images_per_second": images / seconds,
            "val": history[-1]["val_accuracy"], "test": test, "to_target": to_target}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="fast")
    parser.add_argument("--epochs", help="override the recipe's epochs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.99, help="validation accuracy")
    parser.add_argument("--members", type=int, default=2, help="ensemble members (0: skip)")
    parser.add_argument("--configs", default="1x2,2x1", help="processes x threads, ...")
    args = parser.parse_args()
    configs = [tuple(map(int, c.split("x"))) for c in args.configs.split(",")]
    extra = ["--epochs", args.epochs] if args.epochs else []
    print(format_environment(), "\n")

    print(f"{args.model}: {args.seeds} seeds; times in seconds; load: 1-minute load average "
          "before the run", flush=True)
    print(f"{'processes x threads':<20}{'seed':>5}{'wall':>8}{'train':>8}{'images/s':>10}"
          f"{'val':>8}{'test':>8}{f'to {args.target:.1%}':>10}{'load':>6}", flush=True)
    results: dict[tuple[int, int], list[dict]] = {c: [] for c in configs}
    for seed in range(args.seeds):
        for processes, threads in configs:
            load = os.getloadavg()[0]
            r = train_run(processes, threads, args.model, seed, args.target, extra)
            results[processes, threads].append(r)
            reached = f"{r['to_target']:.2f}" if r["to_target"] is not None else "-"
            print(f"{f'{processes} x {threads}':<20}{seed:>5}{r['wall']:>8.2f}{r['train']:>8.2f}"
                  f"{r['images_per_second']:>10,.0f}{r['val']:>8.4f}{r['test']:>8.4f}{reached:>10}"
                  f"{load:>6.1f}", flush=True)
    for (processes, threads), rs in results.items():
        if not rs:
            continue
        print(f"{processes} x {threads}: median images/s "
              f"{statistics.median(r['images_per_second'] for r in rs):,.0f}, median wall "
              f"{statistics.median(r['wall'] for r in rs):.2f} s, mean test accuracy "
              f"{statistics.mean(r['test'] for r in rs):.4f} "
              f"(min {min(r['test'] for r in rs):.4f})")

    if args.members:
        print(f"\nensemble of {args.members} {args.model} members")
        for processes, threads in configs:
            load = os.getloadavg()[0]
            with tempfile.TemporaryDirectory() as tmp:
                wall = timed(command(processes, threads, [
                    "ensemble", "train", "--model", args.model, "--members", str(args.members),
                    "--out", tmp, *extra]))
            how = "member after member" if processes == 1 else f"spread over {processes} ranks"
            print(f"{f'{processes} x {threads}':<20}{wall:>8.2f} s wall ({how}; load {load:.1f})",
                  flush=True)


if __name__ == "__main__":
    main()
