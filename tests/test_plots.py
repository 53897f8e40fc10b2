"""Plots: the data behind each figure, the files written, and the command."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_main
from matplotlib.figure import Figure
from PIL import Image

from mnist_cnn.errors import MnistCnnError
from mnist_cnn.images.preprocess import preprocess
from mnist_cnn.inference.plots import (
    activations,
    confusion_matrix,
    first_layer_filters,
    misclassified,
    mistakes,
    preprocessing_steps,
    roc_curve,
    save,
    training_curves,
)
from mnist_cnn.models.registry import build_model

CLASSES = tuple(str(d) for d in range(10))
HISTORY = [{"epoch": 1, "cost": 0.4, "val_loss": 0.2, "val_accuracy": 0.95},
           {"epoch": 2, "cost": 0.1, "val_loss": 0.08, "val_accuracy": 0.98}]


def titles(figure: Figure) -> list[str]:
    return [ax.get_title() for ax in figure.axes if ax.get_title()]


def test_misclassified_are_the_wrong_ones_most_confident_first():
    probabilities = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.4, 0.6], [0.05, 0.95], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 0, 1, 0])
    assert misclassified(probabilities, labels).tolist() == [4, 1, 2]
    assert misclassified(probabilities, probabilities.argmax(1)).tolist() == []


def test_training_curves_plot_the_history():
    figure = training_curves(HISTORY)
    cost_ax, accuracy_ax = figure.axes
    lines = {line.get_label(): line.get_ydata().tolist() for line in cost_ax.get_lines()}
    assert lines == {"training cost": [0.4, 0.1], "validation loss": [0.2, 0.08]}
    assert accuracy_ax.get_lines()[0].get_ydata().tolist() == [95.0, 98.0]
    with pytest.raises(MnistCnnError, match="no training history"):
        training_curves([])


def test_a_run_without_validation_plots_its_cost_alone():
    figure = training_curves([{"epoch": 1, "cost": 0.4}, {"epoch": 2, "cost": 0.1}])
    (cost_ax,) = figure.axes
    assert [line.get_ydata().tolist() for line in cost_ax.get_lines()] == [[0.4, 0.1]]
    with pytest.raises(MnistCnnError, match="records no cost"):
        training_curves([{"epoch": 1}])


def test_roc_curve_of_digits_against_non_digits():
    digits, others = np.array([0.9, 0.8, 0.7, 0.6]), np.array([0.65, 0.3, 0.2, 0.1])
    figure = roc_curve(digits, others, threshold=0.7)
    curve, point = figure.axes[0].get_lines()[:2]
    # one non-digit (0.65) scores above one digit (0.6): an area of 15/16
    assert curve.get_label() == "ROC (area 0.9375)"
    assert list(point.get_xdata()) == [0.0] and list(point.get_ydata()) == [0.75]
    perfect = roc_curve(digits, others - 0.6).axes[0].get_lines()[0].get_label()
    assert perfect == "ROC (area 1.0000)"


def test_confusion_matrix_hides_the_diagonal_and_counts_errors():
    confusion = np.diag([5] * 10)
    confusion[3, 5] = 2
    figure = confusion_matrix(confusion.tolist(), CLASSES)
    shown = figure.axes[0].get_images()[0].get_array()
    assert shown[3, 5] == 2 and shown.sum() == 2  # only the errors are coloured
    assert figure.axes[0].get_title() == "Confusion matrix: 2 errors in 52"


def test_mistakes_shows_each_wrong_digit_with_label_and_prediction():
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    probabilities = torch.full((5, 10), 0.01)
    probabilities[torch.arange(5), torch.tensor([1, 2, 3, 4, 5])] = 0.91
    labels = torch.tensor([1, 2, 7, 4, 9])  # images 2 and 4 are wrong
    shown = titles(mistakes(images, labels, probabilities, CLASSES))
    assert shown == ["7 → 3\n91%", "9 → 5\n91%"]
    assert titles(mistakes(images, probabilities.argmax(1), probabilities, CLASSES)) == []


@pytest.mark.parametrize("name", ["simple", "deep", "fast"])
def test_filters_and_feature_maps_of_every_network(name):
    model = build_model(name)
    model.train()
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    kernels = first_layer_filters(model).axes
    assert sum(1 for ax in kernels if ax.get_images()) == convolutions[0].out_channels
    figure = activations(model, torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8))
    assert sum(1 for ax in figure.axes if ax.get_title().startswith("→")) == len(convolutions)
    assert model.training  # the mode is restored
    assert not any(m._forward_hooks for m in convolutions)  # and the hooks removed


def test_preprocessing_steps_show_every_stage(tmp_path):
    photo = np.full((60, 50), 230, np.uint8)
    photo[15:45, 22:28] = 20  # a dark "1" on light paper
    steps = preprocess(photo)
    figure = preprocessing_steps(steps, "prediction: 1")
    assert len(titles(figure)) == 5 and figure.get_suptitle() == "prediction: 1"
    path = save(figure, tmp_path / "steps.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 300


def test_plot_command_writes_every_figure(models, tmp_path):
    photo = tmp_path / "seven.png"
    Image.fromarray(255 - models.data.test.images[0, 0].numpy()).resize((90, 90)).save(photo)
    code, out, err = run_main(["plot", str(models.checkpoint), "--out", str(tmp_path / "plots"),
                               "--image", str(photo), "--threads", "1"])
    assert code == 0, err
    written = [line.removeprefix("wrote ") for line in out.splitlines()]
    names = {p.rsplit("/", 1)[1] for p in written}
    assert names == {"training_curves.png", "confusion_matrix.png", "mistakes.png", "filters.png",
                     "activations.png", "photo.png"}
    for path in written:
        with Image.open(path) as image:
            image.verify()


def test_plot_command_reports_a_bad_photo(models, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    code, _, err = run_main(["plot", str(models.checkpoint), "--out", str(tmp_path / "p"),
                             "--image", str(bad)])
    assert code == 1 and "mnist-cnn: error:" in err and "notes.png" in err
    assert not (tmp_path / "p").exists()  # nothing drawn from a failed command


def test_one_epoch_is_a_dot_at_its_step_within_sensible_axes():
    # what the one-epoch demo logs: a single record
    figure = training_curves([{"epoch": 1, "step": 286, "cost": 0.34, "val_loss": 0.1,
                               "val_accuracy": 0.9905}])
    cost_ax, accuracy_ax = figure.axes
    assert cost_ax.get_lines()[0].get_xdata().tolist() == [286]
    assert cost_ax.get_xlabel().startswith("training step")
    left, right = accuracy_ax.get_xlim()
    assert left == 0 and right > 286
    assert accuracy_ax.get_ylim()[1] <= 100
