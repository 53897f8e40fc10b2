"""The lecture's networks in mnist-cnn against the lecture's own TensorFlow 1 code, in one run.

For each network and round, a whole `mnist-cnn train --model M --epochs E --threads T` process and
a whole `benchmarks/tf1_lecture.py --model M --epochs E --threads T` process run one after the
other (alternating, so that drifting background load hits both alike). Printed per network:
training images per second of each (the loop alone, as each reports it), their ratio, and the
whole process's seconds. mnist-cnn runs in fp32 (the lecture's precision) and, where the CPU
has native bfloat16, in bf16 beside it.

TensorFlow lives in its own environment (see tf1_lecture.py):

    python3 -m venv .venv-tf && .venv-tf/bin/pip install tensorflow-cpu numpy
    .venv/bin/python benchmarks/versus_tf1.py --tf-python .venv-tf/bin/python [--rounds 2]
        [--models simple,deep] [--epochs simple=1,deep=0.3] [--threads 2]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mnist_cnn.runtime.device import bf16_supported
from mnist_cnn.runtime.environment import format_environment

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def run(argv: list[str]) -> tuple[float, float]:
    """(training images per second, whole-process seconds) of one run."""
    started = time.perf_counter()
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    seconds = time.perf_counter() - started
    if found := re.search(r"images_per_second=([\d.]+)", out):  # tf1_lecture.py's RESULT line
        return float(found[1]), seconds
    rates = [float(r.replace(",", "")) for r in re.findall(r"([\d,]+) images/s", out)]
    if not rates:
        raise SystemExit(f"no images/s in the output of {' '.join(argv)}:\n{out}")
    return statistics.mean(rates), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tf-python", required=True, help="a Python with TensorFlow")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--models", default="simple,deep")
    parser.add_argument("--epochs", default="simple=1,deep=0.3")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(format_environment(), "\n", flush=True)
    import torch

    epochs = dict(item.split("=") for item in args.epochs.split(","))
    precisions = ["fp32"] + (["bf16"] if bf16_supported(torch.device("cpu")) else [])
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for model in args.models.split(","):
                e = epochs.get(model, "1")
                for precision in precisions:
                    results.setdefault((model, precision), []).append(run([
                        str(BIN / "mnist-cnn"), "train", "--model", model, "--epochs", e,
                        "--precision", precision, "--threads", str(args.threads), "--no-progress",
                        "--out", f"{tmp}/{model}", "--overwrite"]))
                results.setdefault((model, "tf1"), []).append(run([
                    args.tf_python, str(HERE / "tf1_lecture.py"), "--model", model, "--epochs", e,
                    "--threads", str(args.threads)]))
                print(f"  {model}: " + ", ".join(f"{k[1]} {v[-1][0]:,.0f}" for k, v in
                                                results.items() if k[0] == model), flush=True)

    print(f"\n{args.rounds} rounds, {args.threads} threads; training images/s of each round "
          "(whole process, median s); ratio of medians against TensorFlow 1")
    for model in args.models.split(","):
        tf_rate = statistics.median(r for r, _ in results[model, "tf1"])
        for variant in [*precisions, "tf1"]:
            runs = results[model, variant]
            rates = " / ".join(f"{r:,.0f}" for r, _ in runs)
            whole = statistics.median(s for _, s in runs)
            ratio = statistics.median(r for r, _ in runs) / tf_rate
            name = "TensorFlow 1" if variant == "tf1" else f"mnist-cnn {variant}"
            print(f"{model:7s} {name:16s} {rates:>20s} img/s  ({whole:5.1f} s)  {ratio:.2f}x")


if __name__ == "__main__":
    main()
