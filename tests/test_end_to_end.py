"""The lecture's two networks, trained with the lecture's defaults on the full MNIST (minutes)."""

import json
from pathlib import Path

import pytest

from mnist_cnn.cli import main


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize(("model", "bar"), [("simple", 0.987), ("deep", 0.992)])
def test_lecture_network_reaches_its_accuracy(model, bar, precision, tmp_path, capsys):
    """fp32 is the faithful default; bf16 autocast, the faster option, must keep the same bars."""
    out = tmp_path / model
    assert main(["train", "--model", model, "--out", str(out), "--no-progress",
                 "--precision", precision]) == 0
    printed = capsys.readouterr().out
    assert printed.count("Epoch: ") == 15  # the lecture's 15 epochs
    accuracy = json.loads((out / "test_metrics.json").read_text())["accuracy"]
    print(f"{model} {precision}: test accuracy {accuracy:.4f}")
    assert accuracy >= bar


@pytest.mark.slow
def test_fast_recipe_reaches_99_percent_in_one_epoch(tmp_path, capsys):
    out = tmp_path / "fast"
    assert main(["train", "--model", "fast", "--out", str(out), "--no-progress", "--seed", "0"]) == 0
    assert capsys.readouterr().out.count("Epoch: ") == 1
    accuracy = json.loads((out / "test_metrics.json").read_text())["accuracy"]
    print(f"fast: test accuracy {accuracy:.4f}")
    assert accuracy >= 0.990


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
    accuracy = json.loads((out / "test_metrics.json").read_text())["accuracy"]
    print(f"fast on fashion-mnist: test accuracy {accuracy:.4f}")
    assert accuracy >= 0.88
    assert main(["evaluate", str(out / "last.safetensors"), "--show", "0"]) == 0
    assert "Ankle boot" in capsys.readouterr().out
