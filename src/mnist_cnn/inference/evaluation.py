"""One evaluation routine: batched, so memory stays bounded whatever the number of images."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.dataset import Split
from ..models.registry import as_input
from ..runtime.device import Runtime

CPU = Runtime(torch.device("cpu"))


def iterate_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 1000,
                   runtime: Runtime = CPU) -> Iterator[torch.Tensor]:
    """Logits (float32, on the runtime's device) for consecutive batches of `images`.

    Always in float32, whatever precision the runtime trains in: predict and serve answer in
    float32, so a checkpoint scores the same whichever command reports it (bf16 moved one test
    image in 10,000)."""
    was_training = model.training
    model.eval()  # dropout off: the lecture's keep_prob 1.0 at test time
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = runtime.to_batch(as_input(images[start:start + batch_size]))
                yield model(batch).float()
                runtime.poll_threads()
    finally:
        model.train(was_training)


def predict_proba(model: nn.Module, images: torch.Tensor, batch_size: int = 1000,
                  runtime: Runtime = CPU) -> torch.Tensor:
    """Softmax probabilities (N, classes), float32 on the CPU."""
    return torch.cat([F.softmax(logits, dim=1).cpu()
                      for logits in iterate_logits(model, images, batch_size, runtime)])


@dataclass
class Metrics:
    accuracy: float
    loss: float
    count: int
    per_class: list[float]
    confusion: list[list[int]]  # confusion[true][predicted]

    def summary(self) -> dict:
        return {"accuracy": self.accuracy, "loss": self.loss, "count": self.count}


def metrics_from_predictions(predicted: torch.Tensor, labels: torch.Tensor, loss_sum: float,
                             num_classes: int) -> Metrics:
    confusion = torch.bincount(labels * num_classes + predicted,
                               minlength=num_classes ** 2).reshape(num_classes, num_classes)
    per_class_total = confusion.sum(1).clamp(min=1)
    count = len(labels)
    return Metrics(
        accuracy=float(confusion.diag().sum()) / max(count, 1),
        loss=loss_sum / max(count, 1),
        count=count,
        per_class=(confusion.diag() / per_class_total).tolist(),
        confusion=confusion.tolist(),
    )


def metrics_from_proba(probs: torch.Tensor, labels: torch.Tensor) -> Metrics:
    """Metrics from predicted probabilities (N, classes), e.g. an ensemble's averaged softmax."""
    loss_sum = float(-probs.gather(1, labels[:, None]).clamp_min(1e-12).log().sum())
    return metrics_from_predictions(probs.argmax(1), labels, loss_sum, probs.shape[1])


def evaluate(model: nn.Module, split: Split, batch_size: int = 1000,
             runtime: Runtime = CPU) -> Metrics:
    """Accuracy, mean cross-entropy, per-class accuracy and confusion matrix of a split."""
    predicted, loss_sum, start, num_classes = [], 0.0, 0, 0
    for logits in iterate_logits(model, split.images, batch_size, runtime):
        labels = split.labels[start:start + len(logits)].to(logits.device)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        predicted.append(logits.argmax(1).cpu())
        start += len(logits)
        num_classes = logits.shape[1]  # the network's outputs say how many classes there are
    return metrics_from_predictions(torch.cat(predicted), split.labels, loss_sum, num_classes)


def format_metrics(metrics: Metrics, classes: tuple[str, ...]) -> str:
    width = max(6, *(len(c) for c in classes)) if len(classes[0]) > 1 else 6
    lines = [f"Accuracy: {metrics.accuracy:.4f} ({metrics.count} images, "
             f"{round((1 - metrics.accuracy) * metrics.count)} wrong), loss {metrics.loss:.4f}",
             "", "per-class accuracy:"]
    lines += [f"  {c:>{width}}  {a:.4f}" for c, a in zip(classes, metrics.per_class)]
    short = [c[:5] for c in classes]
    lines += ["", "confusion matrix (rows: true, columns: predicted):",
              " " * (width + 2) + "".join(f"{s:>6}" for s in short)]
    lines += [f"  {c:>{width}}" + "".join(f"{n:>6}" for n in row)
              for c, row in zip(classes, metrics.confusion)]
    return "\n".join(lines)


def ascii_digit(image: torch.Tensor) -> str:
    """A 28x28 uint8 image as text, two characters per pixel so it keeps its aspect ratio."""
    shades = " .:-=+*#%@"
    img = image.reshape(image.shape[-2], image.shape[-1]).to(torch.int64)
    return "\n".join("".join(shades[int(v) * (len(shades) - 1) // 255] * 2 for v in row)
                     for row in img)


def ranked(probabilities: torch.Tensor, classes: Sequence[str], k: int) -> list[dict]:
    """The k likeliest classes of one image, most likely first: [{"class", "probability"}]."""
    top_p, top_i = probabilities.topk(min(k, len(probabilities)))
    return [{"class": classes[c], "probability": float(p)}
            for p, c in zip(top_p.tolist(), top_i.tolist())]
