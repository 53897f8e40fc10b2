"""Pictures a learner wants to see: how training went, where the network errs, what its layers
respond to, and what it made of a photo.

Every function draws from data already computed (a checkpoint's history, the evaluation's
confusion matrix, predicted probabilities) and returns a matplotlib Figure. Figures are built
with the object-oriented API, so nothing depends on pyplot's global state or a display.
`write_report` draws them all for one checkpoint.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import nn

from ..data.dataset import Split
from ..errors import MnistCnnError
from ..files import write_atomically
from ..images.preprocess import Preprocessed
from ..models.checkpoint import CheckpointMeta
from ..models.registry import as_input
from ..runtime.device import Runtime
from .evaluation import CPU, metrics_from_proba, predict_proba

CMAP = "gray"  # digits as MNIST stores them: white ink on black


def save(figure: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write a figure as PNG, atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    write_atomically(path, buffer.getvalue())
    return Path(path)


def _grid(count: int, columns: int, cell: float = 1.3, title_space: float = 0.0,
          ) -> tuple[Figure, np.ndarray]:
    rows = max(1, math.ceil(count / columns))
    figure = Figure(figsize=(columns * cell, rows * (cell + title_space)), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False).ravel())
    for ax in axes:
        ax.set_axis_off()
    return figure, axes


# --------------------------------------------------------------------------------------------
# Training


def training_curves(history: Sequence[dict]) -> Figure:
    """Cost and validation accuracy after each epoch, as the training loop logged them, against
    the steps trained: a one-epoch run is a dot at its last step, not an axis of its own."""
    if not history:
        raise MnistCnnError("no training history to plot: the checkpoint records no epochs")
    if not all("cost" in r for r in history):
        raise MnistCnnError("no training curves to plot: the checkpoint's history records no cost")
    validated = all("val_accuracy" in r for r in history)  # not when trained on every image
    by_step = all("step" in r for r in history)  # every record since steps were logged
    x = [r["step"] if by_step else r["epoch"] for r in history]
    xlabel = "training step (a dot: the end of an epoch)" if by_step else "epoch"
    figure = Figure(figsize=(9 if validated else 4.5, 3.5), layout="constrained")
    cost_ax, *others = figure.subplots(1, 2 if validated else 1, squeeze=False)[0]
    cost_ax.plot(x, [r["cost"] for r in history], marker="o", label="training cost")
    if all("val_loss" in r for r in history):
        cost_ax.plot(x, [r["val_loss"] for r in history], marker="o", label="validation loss")
    cost_ax.set(xlabel=xlabel, ylabel="cross-entropy", title="Cost")
    cost_ax.legend()
    for accuracy_ax in others:
        accuracy_ax.plot(x, [100 * r["val_accuracy"] for r in history], marker="o",
                         color="tab:green")
        accuracy_ax.set(xlabel=xlabel, ylabel="%", title="Validation accuracy")
        accuracy_ax.set_ylim(top=min(100, accuracy_ax.get_ylim()[1]))  # never above 100%
    for ax in (cost_ax, *others):
        ax.grid(alpha=0.3)
        ax.set_xlim(left=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return figure


# --------------------------------------------------------------------------------------------
# Errors


def roc_curve(digit_scores: np.ndarray, other_scores: np.ndarray,
              threshold: float | None = None) -> Figure:
    """"Not a digit" as a detector: the share of digits accepted against the share of
    non-digits accepted, for every threshold on the score (higher = more digit-like)."""
    digits, others = np.sort(np.asarray(digit_scores)), np.sort(np.asarray(other_scores))
    cuts = np.unique(np.concatenate([digits, others, [np.inf]]))
    # accepted: score >= cut
    true_rate = 1 - np.searchsorted(digits, cuts, side="left") / len(digits)
    false_rate = 1 - np.searchsorted(others, cuts, side="left") / len(others)
    area = float(np.trapezoid(true_rate[::-1], false_rate[::-1]))
    figure = Figure(figsize=(5, 5), layout="constrained")
    ax = figure.subplots()
    ax.plot(false_rate, true_rate, label=f"ROC (area {area:.4f})")
    if threshold is not None:
        ax.plot([np.mean(others >= threshold)], [np.mean(digits >= threshold)], "o",
                label=f"threshold {threshold:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set(xlabel=f"non-digits accepted (of {len(others)})",
           ylabel=f"digits accepted (of {len(digits)})", xlim=(0, 1), ylim=(0, 1.01),
           title="Digit or not: the network's confidence")
    ax.legend(loc="lower right")
    return figure


def reliability_diagram(sets: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Figure:
    """How sure against how often right: per set (name -> probabilities, labels), each bin of
    the shown confidence at its mean confidence and accuracy; on the diagonal, "p% sure" is
    right p% of the time. The legend gives each set's expected calibration error."""
    from .calibration import calibration_error, reliability

    figure = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfectly calibrated")
    for name, (probabilities, labels) in sets.items():
        points = reliability(probabilities, labels)
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", markersize=4,
                label=f"{name} (ECE {calibration_error(probabilities, labels):.1%}, "
                      f"n={len(labels):,})")
    ax.set(xlabel="shown confidence (bin mean)", ylabel="share right", xlim=(0, 1.01),
           ylim=(0, 1.01), title="Reliability: how sure against how often right")
    ax.legend(loc="upper left", fontsize=8)
    return figure


def confusion_matrix(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> Figure:
    """Counts of (true, predicted) pairs; the diagonal is hidden so that the errors show."""
    counts = np.asarray(confusion)
    errors = counts.copy()
    np.fill_diagonal(errors, 0)
    figure = Figure(figsize=(7, 6), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(errors, cmap="Reds")
    figure.colorbar(image, ax=ax, label="test images (diagonal hidden)")
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45 if max(map(len, classes)) > 2 else 0, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"Confusion matrix: {int(counts.sum() - np.trace(counts))} errors "
                 f"in {int(counts.sum())}")
    for (i, j), n in np.ndenumerate(counts):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                    color="black" if i != j else "gray")
    return figure


def misclassified(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Indices of the wrongly predicted images, the most confident mistakes first."""
    confidence, predicted = probabilities.max(dim=1)
    wrong = torch.nonzero(predicted != labels).flatten()
    return wrong[torch.argsort(confidence[wrong], descending=True, stable=True)]


def mistakes(images: torch.Tensor, labels: torch.Tensor, probabilities: torch.Tensor,
             classes: Sequence[str], limit: int = 40, columns: int = 8) -> Figure:
    """The network's most confident mistakes: each digit with its label and the prediction."""
    picks = misclassified(probabilities, labels)[:limit].tolist()
    figure, axes = _grid(max(1, len(picks)), columns, title_space=0.35)
    if not picks:
        axes[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    for ax, i in zip(axes, picks):
        guess = int(probabilities[i].argmax())
        ax.imshow(images[i].reshape(28, 28).numpy(), cmap=CMAP, vmin=0, vmax=255)
        ax.set_title(f"{classes[int(labels[i])]} → {classes[guess]}\n"
                     f"{float(probabilities[i, guess]):.0%}", fontsize=8)
    figure.suptitle("Most confident mistakes (label → prediction, probability)")
    return figure


# --------------------------------------------------------------------------------------------
# Inside the network


def conv_layers(model: nn.Module) -> list[nn.Conv2d]:
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not layers:
        raise MnistCnnError(f"{type(model).__name__} has no convolution layers to show")
    return layers


def first_layer_filters(model: nn.Module, columns: int = 8) -> Figure:
    """The first convolution's kernels, each scaled to its own range (positive is light)."""
    weights = conv_layers(model)[0].weight.detach().float().cpu()
    kernels = weights[:, 0]  # one input channel: the gray image
    figure, axes = _grid(len(kernels), columns, cell=1.0)
    for ax, kernel in zip(axes, kernels):
        limit = float(kernel.abs().max()) or 1.0
        ax.imshow(kernel.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
    height, width = weights.shape[2:]
    figure.suptitle(f"First-layer filters: {len(kernels)} kernels of {height}x{width}")
    return figure


def activations(model: nn.Module, image: torch.Tensor, channels: int = 8) -> Figure:
    """What each convolution outputs for one digit: the first `channels` feature maps per layer,
    one row per layer, with the digit itself on the left."""
    layers = conv_layers(model)
    outputs: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach()))
             for layer in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(as_input(image.reshape(1, 1, 28, 28)).to(next(model.parameters()).device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    figure = Figure(figsize=((channels + 1) * 1.1, len(layers) * 1.25 + 0.4), layout="constrained")
    axes = figure.subplots(len(layers), channels + 1, squeeze=False)
    for row, out in zip(axes, outputs):
        for ax in row:
            ax.set_axis_off()
        row[0].imshow(image.reshape(28, 28).cpu().numpy(), cmap=CMAP, vmin=0, vmax=255)
        shape = tuple(out.shape[2:]) + (out.shape[1],)
        row[0].set_title(f"→ {shape}", fontsize=7)  # the lecture's (H, W, C) order
        for ax, feature in zip(row[1:], out[0, :channels].float().cpu()):
            ax.imshow(feature.numpy(), cmap="viridis")
    figure.suptitle("Feature maps of each convolution (before its activation)")
    return figure


# --------------------------------------------------------------------------------------------
# A photo


def preprocessing_steps(steps: Preprocessed, prediction: str | None = None) -> Figure:
    """Each stage of turning a photo into the MNIST convention, as imaging.preprocess did it."""
    panels = [("as loaded (gray)", steps.gray),
              ("ink" + (" (inverted)" if steps.inverted else ""), steps.ink),
              ("cropped to the ink", steps.cropped),
              (f"scaled to {max(steps.scaled.shape)} px", steps.scaled),
              ("28x28, centred by mass", steps.final)]
    figure = Figure(figsize=(len(panels) * 2.2, 2.8), layout="constrained")
    for ax, (title, picture) in zip(figure.subplots(1, len(panels)), panels):
        ax.imshow(picture, cmap=CMAP, vmin=0, vmax=255)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    if prediction:
        figure.suptitle(prediction)
    return figure


# --------------------------------------------------------------------------------------------


def write_report(model: nn.Module, meta: CheckpointMeta, test: Split, classes: Sequence[str],
                 out_dir: str | Path, runtime: Runtime = CPU, batch_size: int = 1000,
                 photo: Preprocessed | None = None) -> list[Path]:
    """Every plot for one trained network, as PNG files in out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    probabilities = predict_proba(model, test.images, batch_size, runtime)
    metrics = metrics_from_proba(probabilities, test.labels)
    figures = {
        "training_curves.png": training_curves(meta.history),
        "confusion_matrix.png": confusion_matrix(metrics.confusion, classes),
        "mistakes.png": mistakes(test.images, test.labels, probabilities, classes),
        "filters.png": first_layer_filters(model),
        "activations.png": activations(model, test.images[0]),  # the same digit every time
    }
    if photo is not None:
        p = predict_proba(model, torch.from_numpy(photo.final).reshape(1, 1, 28, 28),
                          runtime=runtime)[0]
        guess = int(p.argmax())
        figures["photo.png"] = preprocessing_steps(
            photo, f"prediction: {classes[guess]} ({float(p[guess]):.1%})")
    return [save(figure, out / name) for name, figure in figures.items()]
