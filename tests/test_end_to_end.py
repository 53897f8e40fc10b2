"""The lecture's two networks with the lecture's defaults on the full MNIST, and the fast recipe."""

import json
import math
from pathlib import Path

import pytest

from mnist_cnn.cli import main
from mnist_cnn.inference.evaluation import evaluate
from mnist_cnn.models.checkpoint import load_checkpoint
from mnist_cnn.models.recipes import Recipe
from mnist_cnn.models.registry import recipe_for


def accuracy_of(out: Path) -> float:
    return json.loads((out / "test_metrics.json").read_text())["accuracy"]


# The lecture's 15-epoch runs take 20 to 50 minutes on 2 cores, so benchmarks/lecture_accuracy.py
# trains them and records each run's test accuracy and seed 0's weights in benchmarks/results;
# the tests below check that record against the recipes as they are now, evaluate the recorded
# weights on the real test set, and train the lecture's recipe for one epoch.
RESULTS = Path(__file__).parents[1] / "benchmarks" / "results"
RERUN = "the recipe changed since the record: rerun benchmarks/lecture_accuracy.py"

# Accuracy moves with the seed and with the kernels oneDNN picks (CPU model, thread count,
# precision). Single runs of the simple CNN have a mean of 98.77% and a standard deviation of 0.14
# points (12 runs): its bar, 98.7%, lies within that spread. So each bar is tested as a
# hypothesis: the mean of runs with different seeds may fall short of it only by what the spread
# between runs explains at the 1% level (2.33 standard errors), and every run must clear a floor
# far below it. A recipe that truly reaches its bar fails 1 time in 100; one that falls 0.25
# points short (simple) or 0.15 (deep) fails 98 times in 100.
LECTURE_RUNS = {
    # model: (bar, run-to-run standard deviation measured, floor, seeds, precision)
    "simple": (0.987, 0.0014, 0.983, 6, "fp32"),  # the lecture's fp32
    "deep": (0.992, 0.00065, 0.990, 3, "bf16"),  # half fp32's time
}
Z_ONE_PERCENT = 2.33


@pytest.fixture(scope="module")
def lecture_record() -> dict:
    return json.loads((RESULTS / "lecture.json").read_text())


@pytest.mark.parametrize("model", sorted(LECTURE_RUNS))
def test_lecture_network_reaches_its_accuracy(model, lecture_record):
    bar, spread, floor, seeds, precision = LECTURE_RUNS[model]
    assert Recipe.from_dict(lecture_record["recipes"][model]) == recipe_for(model), RERUN
    runs = lecture_record["runs"][model]
    assert sorted(run["seed"] for run in runs) == list(range(seeds))
    assert all(run["precision"] == precision and run["epochs"] == 15 for run in runs)
    accuracies = [run["test_accuracy"] for run in runs]
    mean = sum(accuracies) / len(accuracies)
    shortfall_allowed = Z_ONE_PERCENT * spread / math.sqrt(seeds)
    print(f"{model}: mean test accuracy {mean:.4f} over {seeds} runs {accuracies}; "
          f"the bar {bar:.3f} holds unless the mean is below {bar - shortfall_allowed:.4f}")
    assert mean >= bar - shortfall_allowed
    assert min(accuracies) >= floor


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(LECTURE_RUNS))
def test_the_recorded_weights_score_what_the_record_says(model, lecture_record, mnist):
    *_, floor, _, precision = LECTURE_RUNS[model]
    network, meta = load_checkpoint(RESULTS / f"lecture-{model}.safetensors")
    assert meta.recipe == recipe_for(model).replace(precision=precision), RERUN
    assert meta.checksums == mnist.checksums and meta.epoch == 15
    measured = evaluate(network, mnist.test).accuracy
    # fp32 kernels of another CPU may flip an image or two whose two best classes nearly tie
    assert abs(measured - lecture_record["kept_fp32_test_accuracy"][model]) <= 3 / 10_000
    assert measured >= floor


@pytest.mark.slow
def test_the_lecture_recipe_learns_in_one_epoch(tmp_path, mnist_data_dir):
    """The simple CNN with the lecture's recipe, for its first epoch only (96.95% on seed 0 then)."""
    out = tmp_path / "simple"
    assert main(["train", "--model", "simple", "--epochs", "1", "--out", str(out),
                 "--no-progress", "--data-dir", str(mnist_data_dir)]) == 0
    assert accuracy_of(out) >= 0.96


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
