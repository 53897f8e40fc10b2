"""Training speed on an idle machine against one with a busy process beside it, interleaved.

For each network, whole `mnist-cnn train` processes are timed with the default thread choice
(which follows the machine's load), with fixed thread counts, and, given --tf-python, the
lecture's TensorFlow 1 code (benchmarks/tf1_lecture.py, run by a Python that has TensorFlow).
"Busy" is one other CPU-bound process (a Python busy loop), as a laptop's browser or compiler
would be. Rounds alternate idle and busy so that drifting background load hits both alike.

Usage: python benchmarks/contention.py [--rounds 2] [--models fast,simple,deep]
           [--variants auto,threads=2,threads=1] [--tf-python /path/to/venv/bin/python]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mnist_cnn.runtime.environment import format_environment

HERE = Path(__file__).resolve().parent
# how much of each network to train: enough steps for the thread choice to matter
EPOCHS = {"fast": 1.0, "simple": 1.0, "deep": 0.3}
TF_MODELS = {"simple", "deep"}


def train_command(model: str, variant: str, out: str, tf_python: str | None) -> list[str]:
    epochs = str(EPOCHS[model])
    if variant == "tf1":
        return [tf_python, str(HERE / "tf1_lecture.py"), "--model", model, "--epochs", epochs]
    cli = str(Path(sys.executable).with_name("mnist-cnn"))
    command = [cli, "train", "--model", model, "--epochs", epochs, "--out", out, "--no-progress"]
    if variant.startswith("threads="):
        command += ["--threads", variant.split("=", 1)[1]]
    return command


def run_once(command: list[str]) -> tuple[float, float]:
    """(training seconds as the program reports them, whole-process seconds)."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    found = (re.search(r"Learning Finished! \(([\d.]+) s of training\)", done.stdout)
             or re.search(r"train_seconds=([\d.]+)", done.stdout))
    return float(found.group(1)), wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--models", default="fast,simple,deep")
    parser.add_argument("--variants", default="auto,threads=2,threads=1")
    parser.add_argument("--tf-python", help="a Python with TensorFlow, to time the lecture's code")
    args = parser.parse_args()
    print(format_environment(), "\n", flush=True)

    variants = args.variants.split(",") + (["tf1"] if args.tf_python else [])
    models = args.models.split(",")
    times: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for load in ("idle", "busy"):
                hog = None
                if load == "busy":
                    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    time.sleep(1.0)  # let the machine see it before the run starts
                try:
                    for model in models:
                        for variant in variants:
                            if variant == "tf1" and model not in TF_MODELS:
                                continue
                            out = os.path.join(tmp, f"{model}-{variant}-{load}-{round_}")
                            t = run_once(train_command(model, variant, out, args.tf_python))
                            times.setdefault((model, variant, load), []).append(t)
                            print(f"round {round_ + 1} {load:<4} {model:<6} {variant:<9} "
                                  f"training {t[0]:6.2f} s, whole process {t[1]:6.2f} s",
                                  flush=True)
                finally:
                    if hog is not None:
                        hog.kill()
                        hog.wait()

    print("\nmedians over the rounds; 'busy / idle' compares each variant with itself, "
          "'vs auto idle' with the default on an idle machine")
    print(f"{'model':<7}{'variant':<10}{'epochs':>7}{'idle train':>12}{'busy train':>12}"
          f"{'busy/idle':>10}{'vs auto idle':>13}{'idle whole':>12}{'busy whole':>12}")
    for model in models:
        base = times.get((model, "auto", "idle"))
        for variant in variants:
            if (model, variant, "idle") not in times:
                continue
            idle = [statistics.median(x) for x in zip(*times[(model, variant, "idle")])]
            busy = [statistics.median(x) for x in zip(*times[(model, variant, "busy")])]
            vs_auto = (f"{busy[0] / statistics.median(t for t, _ in base):.2f}x" if base else "-")
            print(f"{model:<7}{variant:<10}{EPOCHS[model]:>7}{idle[0]:>11.2f}s{busy[0]:>11.2f}s"
                  f"{busy[0] / idle[0]:>9.2f}x{vs_auto:>13}{idle[1]:>11.2f}s{busy[1]:>11.2f}s")


if __name__ == "__main__":
    main()
