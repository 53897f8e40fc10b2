"""How sure, truthfully: temperature scaling of the network's logits, and the expected
calibration error (ECE) that says whether "p% sure" is right p% of the time.

A network trained with label smoothing and outlier exposure is under-confident on clean digits
(its probabilities stop near 0.9) and can be over-confident on odd ones. One number, the
temperature T, divides the logits before the softmax; it is fitted on held-out digits by
minimising their negative log-likelihood (Guo et al., 2017), stored in the checkpoint, and used
by everything that shows a probability or decides "not a digit".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import MnistCnnError

# a network with its temperature: defined with the checkpoint, which loads the shipped model calibrated
from ..models.checkpoint import MAX_TEMPERATURE, MIN_TEMPERATURE
from ..models.checkpoint import Calibrated as Calibrated

BINS = 15  # equal-width confidence bins for the ECE, as in Guo et al.


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature that minimises the negative log-likelihood of `labels` under
    softmax(logits / T), searched on log T (LBFGS, from T = 1)."""
    logits, labels = logits.detach().double(), labels.long()
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise MnistCnnError("temperature fitting needs logits (N, classes) and N labels, N >= 1")
    if not bool(torch.isfinite(logits).all()):
        raise MnistCnnError("temperature fitting needs finite logits")
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(MIN_TEMPERATURE, MAX_TEMPERATURE))


def calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS
                      ) -> float:
    """The expected calibration error: over equal-width bins of the shown confidence (the top
    probability), the gap between accuracy and mean confidence, weighted by the bin's share."""
    confidence, predicted = probabilities.max(dim=1)
    right = (predicted == labels).double()
    which = torch.clamp((confidence * bins).long(), max=bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += float(inside.double().mean()) * abs(float(right[inside].mean())
                                                         - float(confidence[inside].double().mean()))
    return error


def reliability(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS
                ) -> list[tuple[float, float, int]]:
    """Per non-empty bin: (mean confidence, accuracy, count), for the reliability diagram."""
    confidence, predicted = probabilities.max(dim=1)
    right = (predicted == labels).double()
    which = torch.clamp((confidence * bins).long(), max=bins - 1)
    return [(float(confidence[which == b].double().mean()), float(right[which == b].mean()),
             int((which == b).sum())) for b in range(bins) if bool((which == b).any())]
