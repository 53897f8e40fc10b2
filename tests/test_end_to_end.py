"""The lecture's two networks, trained with the lecture's defaults on the full MNIST (minutes)."""

import json

import pytest

from mnist_cnn.cli import main


@pytest.mark.slow
@pytest.mark.parametrize(("model", "bar"), [("simple", 0.987), ("deep", 0.992)])
def test_lecture_network_reaches_its_accuracy(model, bar, tmp_path, capsys):
    out = tmp_path / model
    assert main(["train", "--model", model, "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("Epoch: ") == 15  # the lecture's 15 epochs
    accuracy = json.loads((out / "test_metrics.json").read_text())["accuracy"]
    print(f"{model}: test accuracy {accuracy:.4f}")
    assert accuracy >= bar
