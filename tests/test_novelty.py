""""Not a digit": the decision, its calibration, and the shipped network on drawn non-digits."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mnist_cnn.errors import MnistCnnError
from mnist_cnn.images.preprocess import load_and_preprocess, to_tensor
from mnist_cnn.images.synthetic import outlier_pool
from mnist_cnn.inference.evaluation import predict_proba
from mnist_cnn.inference.novelty import (
    SMALL_INK,
    SMALL_INK_SURE,
    calibrate_threshold,
    confidence,
    ensemble_threshold,
    is_digit,
)
from mnist_cnn.models.checkpoint import load_pretrained


def test_is_digit_compares_the_best_probability_with_the_threshold():
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.5, 0.5, 0.0]])
    assert is_digit(probs, 0.5).tolist() == [True, False, True]
    assert is_digit(probs, 0.95).tolist() == [False, False, False]
    assert is_digit(probs, None).tolist() == [True, True, True]  # never calibrated: never refuse
    assert bool(is_digit(probs[0], 0.5))  # one image, one answer


def test_small_ink_must_be_surer():
    sure = (SMALL_INK_SURE + 0.5) / 1.5  # between SMALL_INK_SURE and 1
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.8, 0.1, 0.1], [sure, 1 - sure, 0.0]])
    assert is_digit(probs, 0.5, [SMALL_INK, SMALL_INK - 1, 10]).tolist() == [True, False, True]
    assert is_digit(probs, 0.5).tolist() == [True, True, True]  # size unknown: the threshold
    assert is_digit(probs, 0.99, [100, 5, 5]).tolist() == [False, False, False]  # never lower
    assert is_digit(probs, None, [1, 1, 1]).tolist() == [True, True, True]
    assert not bool(is_digit(probs[0], 0.5, SMALL_INK - 1))  # one image, one answer


def test_calibration_accepts_the_share_asked_for():
    scores = np.random.default_rng(0).uniform(0.2, 1.0, 1000)
    for accept in (0.9, 0.99, 1.0):
        threshold = calibrate_threshold(scores, accept)
        assert np.mean(scores >= threshold) >= accept
        assert np.mean(scores >= threshold) < accept + 0.002  # ... and no more than needed
    for bad in ([], [0.5, float("nan")]):
        with pytest.raises(MnistCnnError):
            calibrate_threshold(np.asarray(bad))
    with pytest.raises(MnistCnnError):
        calibrate_threshold(scores, 1.5)


def test_an_ensemble_refuses_only_when_every_member_was_calibrated():
    assert ensemble_threshold([0.8, 0.6]) == 0.6
    assert ensemble_threshold([0.8, None]) is None
    assert ensemble_threshold([None]) is None


# --------------------------------------------------------------------------------------------
# The shipped network


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(1)
    model, meta = load_pretrained()
    assert meta.digit_threshold is not None, "the shipped network has no digit threshold"
    return model, meta.digit_threshold


def drawn(draw_on) -> torch.Tensor:
    """A pen drawing on white paper, as a photo file would hold it, preprocessed as predict does."""
    image = Image.new("L", (200, 200), 255)
    draw_on(ImageDraw.Draw(image))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return to_tensor(load_and_preprocess(buffer.getvalue()).final)


def scribble(draw: ImageDraw.ImageDraw) -> None:
    t = np.linspace(0, 6 * np.pi, 80)
    points = np.stack([100 + 60 * np.sin(1.3 * t) * np.cos(0.5 * t),
                       100 + 60 * np.sin(0.7 * t + 1)], 1)
    draw.line([tuple(p) for p in points], fill=0, width=7, joint="curve")


def letter_k(draw: ImageDraw.ImageDraw) -> None:
    draw.line([(60, 30), (60, 170)], fill=0, width=9)
    draw.line([(140, 30), (62, 100), (145, 170)], fill=0, width=9)


def letter_m(draw: ImageDraw.ImageDraw) -> None:
    draw.line([(40, 170), (50, 40), (100, 130), (150, 40), (160, 170)], fill=0, width=9,
              joint="curve")


@pytest.mark.parametrize("draw_on", [scribble, letter_k, letter_m])
def test_drawn_non_digits_are_not_digits(shipped, draw_on):
    model, threshold = shipped
    probs = predict_proba(model, drawn(draw_on)[None])
    assert not bool(is_digit(probs, threshold)[0]), float(confidence(probs)[0])


def test_mnist_test_digits_are_digits(shipped, mnist):
    model, threshold = shipped
    images, labels = mnist.test.images[:300], mnist.test.labels[:300]
    probs = predict_proba(model, images)
    accepted = is_digit(probs, threshold)
    # calibrated to accept 99% of photographed digits: clean MNIST digits pass at least as often
    assert accepted.float().mean() >= 0.98
    assert (accepted & (probs.argmax(1) == labels)).float().mean() >= 0.98


def test_outlier_pool_is_deterministic_and_looks_like_predicts_input():
    a, b = outlier_pool(12, seed=3), outlier_pool(12, seed=3)
    assert a.shape == (12, 28, 28) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, outlier_pool(12, seed=4))
    assert (a.reshape(12, -1).max(1) == 255).all()  # preprocessed: the ink is stretched to 255


def test_outlier_exposure_makes_the_network_unsure_of_non_digits(tiny_dataset, monkeypatch):
    from mnist_cnn.models.registry import build_model, recipe_for
    from mnist_cnn.runtime.device import setup
    from mnist_cnn.training import loop as training

    monkeypatch.setattr(training, "OUTLIER_POOL", 200)  # a small pool: seconds, not minutes
    runtime = setup("cpu", threads=1)
    pool = torch.from_numpy(outlier_pool(200, seed=10_000))[:, None]  # the pool seed 0 trains on
    sure = []
    for weight in (0.0, 1.0):
        recipe = recipe_for("simple").replace(epochs=3, batch_size=50, lr=2e-3,
                                              outlier_exposure=weight)
        model = training.train(build_model(recipe), tiny_dataset, recipe, runtime,
                               progress=False, log=lambda _: None).model.eval()
        sure.append(float(confidence(predict_proba(model, pool)).mean()))
    assert sure[1] < sure[0] - 0.2, sure


def test_a_negative_outlier_exposure_is_refused():
    from mnist_cnn.models.registry import recipe_for

    with pytest.raises(MnistCnnError, match="outlier exposure"):
        recipe_for("simple").replace(outlier_exposure=-1.0).validate()
