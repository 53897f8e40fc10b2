"""Is it a digit at all? A threshold on the network's confidence (its largest class probability).

A classifier answers one of its classes for anything, letters and scribbles too. The shipped
network is trained with outlier exposure (synthetic non-digits pushed towards a uniform answer,
see training.py), so on things that look like no digit its largest probability stays low; the
threshold below which an image is "not a digit" is calibrated on held-out digit photos and stored
in the checkpoint's metadata (`CheckpointMeta.digit_threshold`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import MnistCnnError

SMALL_INK = 32  # px: ink spanning fewer pixels than this ...
SMALL_INK_SURE = 0.9  # ... is a digit only when the network is at least this sure


def confidence(probabilities: torch.Tensor) -> torch.Tensor:
    """The score: each row's largest probability."""
    return probabilities.max(dim=-1).values


def is_digit(probabilities: torch.Tensor, threshold: float | None,
             ink_sides: Sequence[int] | int | None = None) -> torch.Tensor:
    """One bool per row of class probabilities: True when the network is at least `threshold`
    sure of its best class. No threshold (a checkpoint never calibrated) refuses nothing.

    `ink_sides`: the longer side of each image's ink, in pixels of the picture as read. Ink
    spanning fewer than SMALL_INK pixels (a small photo, or a digit far away in a large one)
    shows less of its shape, and letters that small pass for sure digits far more often, so
    there the network must be at least SMALL_INK_SURE sure. On the photos' tuning split this
    refused 1.8 points more of the letters for 0.3 points fewer digits accepted; raising the
    threshold everywhere, at the same cost in digits, refused 0.8 points more."""
    scores = confidence(probabilities)
    if threshold is None:
        return torch.ones_like(scores, dtype=torch.bool)
    if ink_sides is None:
        return scores >= threshold
    small = torch.as_tensor(ink_sides).reshape(scores.shape) < SMALL_INK
    return scores >= torch.where(small, max(threshold, SMALL_INK_SURE), threshold)


def ensemble_threshold(thresholds: Sequence[float | None]) -> float | None:
    """The threshold for the averaged softmax of networks with these thresholds: the lowest (the
    average of members that disagree is less sure than any one of them, so that one still refuses
    such images), or None unless every member was calibrated."""
    known = [t for t in thresholds if t is not None]
    if not thresholds or len(known) < len(thresholds):
        return None
    return min(known)


def calibrate_threshold(digit_scores: np.ndarray | torch.Tensor, accept: float = 0.99) -> float:
    """The threshold that accepts the share `accept` of held-out digits with these scores."""
    scores = np.asarray(digit_scores, dtype=np.float64)
    if scores.size == 0 or not np.isfinite(scores).all():
        raise MnistCnnError("calibration needs finite scores of at least one digit")
    if not 0 < accept <= 1:
        raise MnistCnnError(f"the share of digits to accept must be in (0, 1], not {accept}")
    # the lower quantile, so at least `accept` of the scores are >= the threshold
    return float(np.quantile(scores, 1 - accept, method="lower"))
