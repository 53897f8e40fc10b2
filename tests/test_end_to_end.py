"""The lecture's two networks, trained with the lecture's defaults on the full MNIST (minutes)."""

import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mnist_cnn.cli import main
from mnist_cnn.runtime.device import cpu_count


def accuracy_of(out: Path) -> float:
    return json.loads((out / "test_metrics.json").read_text())["accuracy"]


# Accuracy moves with the seed and with the kernels oneDNN picks (CPU model, thread count,
# precision). Measured here (README, "Results on any machine"), single runs of the simple CNN have
# a mean of 98.77% and a standard deviation of 0.14 points (12 runs): its bar, 98.7%, lies within that
# spread, and the mean of the 6 runs CI can afford misses it about one time in 12. So each bar is
# tested as a hypothesis: the mean of runs with different seeds may fall short of it only by what
# the spread between runs explains at the 1% level (2.33 standard errors), and every run must
# clear a floor far below it. A recipe that truly reaches its bar fails 1 time in 100; one that
# falls 0.25 points short (simple) or 0.15 (deep) fails 98 times in 100.
LECTURE_RUNS = {
    # model: (bar, run-to-run standard deviation measured, floor, [(seed, precision), ...])
    "simple": (0.987, 0.0014, 0.983, [(seed, "fp32") for seed in range(6)]),  # the lecture's fp32
    "deep": (0.992, 0.00065, 0.990, [(seed, "bf16") for seed in range(3)]),  # half fp32's time
}
Z_ONE_PERCENT = 2.33


@pytest.fixture(scope="module")
def lecture_runs(tmp_path_factory, mnist_data_dir) -> dict[str, list[float]]:
    """Every run above, as `mnist-cnn train` processes of one thread each, as many at once as
    there are cores: on 2 cores two one-thread runs get more done than one run of two threads."""
    base = tmp_path_factory.mktemp("lecture")
    jobs = [(model, seed, precision) for model, (*_, runs) in LECTURE_RUNS.items()
            for seed, precision in runs]
    jobs.sort(key=lambda job: job[0] != "deep")  # the longest first: the cores finish together

    def run(job: tuple[str, int, str]) -> float:
        model, seed, precision = job
        out = base / f"{model}-{seed}-{precision}"
        done = subprocess.run(
            [sys.executable, "-m", "mnist_cnn", "train", "--model", model, "--seed", str(seed),
             "--precision", precision, "--threads", "1", "--out", str(out), "--no-progress",
             "--data-dir", str(mnist_data_dir)],
            capture_output=True, text=True, timeout=3600)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.count("Epoch: ") == 15  # the lecture's 15 epochs
        print(f"{model} seed {seed} {precision}: test accuracy {accuracy_of(out):.4f}")
        return accuracy_of(out)

    with ThreadPoolExecutor(max(1, min(cpu_count(), len(jobs)))) as pool:
        accuracies = list(pool.map(run, jobs))
    results: dict[str, list[float]] = {}
    for (model, _, _), accuracy in zip(jobs, accuracies):
        results.setdefault(model, []).append(accuracy)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(LECTURE_RUNS))
def test_lecture_network_reaches_its_accuracy(model, lecture_runs):
    bar, spread, floor, runs = LECTURE_RUNS[model]
    accuracies = lecture_runs[model]
    mean = sum(accuracies) / len(accuracies)
    shortfall_allowed = Z_ONE_PERCENT * spread / math.sqrt(len(runs))
    print(f"{model}: mean test accuracy {mean:.4f} over {len(runs)} runs {accuracies}; "
          f"the bar {bar:.3f} holds unless the mean is below {bar - shortfall_allowed:.4f}")
    assert len(accuracies) == len(runs)
    assert mean >= bar - shortfall_allowed
    assert min(accuracies) >= floor


@pytest.mark.slow
def test_fast_recipe_reaches_99_percent_in_one_epoch(tmp_path, capsys):
    """99% on every seed is measured by benchmarks/time_to_99.py over 20 seeds; here three seeds
    must average well above it, each clear of a floor (the spread between kernels is ~0.15)."""
    accuracies = []
    for seed in range(3):
        out = tmp_path / f"fast-{seed}"
        assert main(["train", "--model", "fast", "--out", str(out), "--no-progress",
                     "--seed", str(seed)]) == 0
        assert capsys.readouterr().out.count("Epoch: ") == 1
        accuracies.append(accuracy_of(out))
    print(f"fast: test accuracies {accuracies}")
    assert sum(accuracies) / 3 >= 0.9905
    assert min(accuracies) >= 0.9885


@pytest.mark.slow
def test_short_ensemble_trains_and_evaluates_from_the_cli(tmp_path, capsys):
    out = tmp_path / "ensemble"
    args = ["--model", "fast", "--epochs", "0.3", "--no-progress"]
    assert main(["ensemble", "train", *args, "--members", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    members = [str(out / f"member-{k}" / "last.safetensors") for k in range(2)]
    assert main(["ensemble", "evaluate", *members]) == 0
    printed = capsys.readouterr().out
    accuracies = [float(line.rsplit(" ", 1)[1]) for line in printed.splitlines()
                  if line.startswith("member ")]
    ensemble = float(printed.split("averaged softmax): ")[1].split()[0])
    assert len(accuracies) == 2 and all(a > 0.95 for a in accuracies)
    assert ensemble >= min(accuracies)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="needs Debian's dataset-fashion-mnist (.ci/run installs it)")
def test_fashion_mnist_goes_through_the_same_paths(tmp_path, capsys):
    out = tmp_path / "fashion"
    assert main(["train", "--model", "fast", "--dataset", "fashion-mnist", "--out", str(out),
                 "--no-progress"]) == 0
    accuracy = accuracy_of(out)
    print(f"fast on fashion-mnist: test accuracy {accuracy:.4f}")
    assert accuracy >= 0.88
    assert main(["evaluate", str(out / "last.safetensors"), "--show", "0"]) == 0
    assert "Ankle boot" in capsys.readouterr().out
