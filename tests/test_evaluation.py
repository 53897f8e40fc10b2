"""Metrics, batched evaluation, probabilities and the text renderings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mnist_cnn.data.dataset import Split
from mnist_cnn.inference.evaluation import (
    ascii_digit,
    evaluate,
    format_metrics,
    metrics_from_predictions,
    predict_proba,
)
from mnist_cnn.models.registry import as_input, build_model, recipe_for
from mnist_cnn.runtime.device import Runtime

DIGITS = tuple(str(d) for d in range(10))


def test_metrics_from_predictions_by_hand():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    predicted = torch.tensor([0, 1, 1, 2, 0, 2])
    m = metrics_from_predictions(predicted, labels, loss_sum=3.0, num_classes=3)
    assert m.confusion == [[1, 1, 0],
                           [0, 1, 0],
                           [1, 0, 2]]
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.loss == pytest.approx(0.5)
    assert m.count == 6
    assert m.per_class == pytest.approx([0.5, 1.0, 2 / 3])
    assert m.summary() == {"accuracy": m.accuracy, "loss": 0.5, "count": 6}


def test_a_class_without_examples_has_zero_accuracy_not_nan():
    m = metrics_from_predictions(torch.tensor([0, 1]), torch.tensor([0, 0]), 0.0, num_classes=3)
    assert m.confusion == [[1, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert m.per_class == [0.5, 0.0, 0.0]
    assert m.accuracy == 0.5


@pytest.fixture(scope="module")
def model():
    net = build_model(recipe_for("simple").replace(seed=3))
    with torch.no_grad():  # confident, varied predictions rather than the biases' favourite
        net[-1].bias.zero_()
        net[-1].weight.mul_(300)
    return net


def test_evaluate_agrees_with_a_direct_computation(model, tiny_dataset):
    split = tiny_dataset.test
    metrics = evaluate(model, split, batch_size=1000)
    with torch.no_grad():
        logits = model.eval()(as_input(split.images))
    predicted = logits.argmax(1)
    assert metrics.count == 200
    assert metrics.accuracy == pytest.approx(float((predicted == split.labels).float().mean()))
    assert metrics.loss == pytest.approx(float(F.cross_entropy(logits, split.labels)), rel=1e-5)
    expected = torch.zeros(10, 10, dtype=torch.int64)
    for t, p in zip(split.labels.tolist(), predicted.tolist(), strict=True):
        expected[t, p] += 1
    assert metrics.confusion == expected.tolist()
    assert len(set(predicted.tolist())) > 1  # the check above is not trivially satisfied


def test_evaluate_does_not_depend_on_the_batch_size(model, tiny_dataset):
    results = [evaluate(model, tiny_dataset.test, batch_size=b) for b in (7, 100, 1000)]
    for other in results[1:]:
        assert other.confusion == results[0].confusion
        assert other.accuracy == results[0].accuracy
        assert other.per_class == results[0].per_class
        assert other.loss == pytest.approx(results[0].loss, rel=1e-5)


def test_evaluate_turns_dropout_off_and_restores_the_mode(tiny_dataset):
    net = build_model("deep").train()
    first = evaluate(net, tiny_dataset.val, batch_size=50)
    second = evaluate(net, tiny_dataset.val, batch_size=50)
    assert net.training
    assert first.confusion == second.confusion
    assert first.loss == pytest.approx(second.loss, rel=1e-6)


def test_predict_proba_rows_are_distributions(model, tiny_dataset):
    images = tiny_dataset.test.images[:50]
    probs = predict_proba(model, images, batch_size=16)
    assert probs.shape == (50, 10)
    assert probs.dtype == torch.float32
    assert (probs >= 0).all()
    assert torch.allclose(probs.sum(1), torch.ones(50), atol=1e-5)
    with torch.no_grad():
        logits = model.eval()(as_input(images))
    assert torch.equal(probs.argmax(1), logits.argmax(1))
    assert float(probs.max() - probs.min()) > 0.1  # not uniform


def test_format_metrics_shows_accuracy_and_the_matrix():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    predicted = torch.tensor([0, 1, 1, 2, 0, 2])
    m = metrics_from_predictions(predicted, labels, loss_sum=3.0, num_classes=3)
    text = format_metrics(m, ("0", "1", "2"))
    assert "Accuracy: 0.6667 (6 images, 2 wrong), loss 0.5000" in text
    assert "confusion matrix (rows: true, columns: predicted):" in text
    rows = text.split("confusion matrix")[1].splitlines()[1:]
    assert [r.split() for r in rows] == [["0", "1", "2"],
                                         ["0", "1", "1", "0"],
                                         ["1", "0", "1", "0"],
                                         ["2", "1", "0", "2"]]
    per_class = text.split("per-class accuracy:")[1].split("confusion")[0].split()
    assert per_class == ["0", "0.5000", "1", "1.0000", "2", "0.6667"]


def test_format_metrics_with_named_classes():
    m = metrics_from_predictions(torch.tensor([0, 1]), torch.tensor([0, 1]), 0.2, num_classes=2)
    text = format_metrics(m, ("T-shirt/top", "Trouser"))
    assert "T-shirt/top  1.0000" in text
    assert "T-shi" in text.split("columns: predicted):")[1].splitlines()[1]


def test_ascii_digit_draws_28_lines_of_56_characters():
    image = torch.zeros(1, 28, 28, dtype=torch.uint8)
    image[0, 5, 3] = 255
    image[0, 6, 3] = 128
    lines = ascii_digit(image).split("\n")
    assert len(lines) == 28
    assert {len(line) for line in lines} == {56}
    assert lines[5][6:8] == "@@"
    assert lines[6][6:8] not in ("  ", "@@")
    assert lines[0] == " " * 56


def test_split_length():
    split = Split(torch.zeros(3, 1, 28, 28, dtype=torch.uint8), torch.tensor([1, 2, 3]))
    assert len(split) == 3


def test_evaluation_runs_in_float32_whatever_precision_trained_the_network():
    """A bf16 runtime trains in bf16 but evaluates as predict and serve answer: in float32, so
    `train`, `evaluate` and `ensemble evaluate` report the same accuracy for a checkpoint."""
    torch.manual_seed(0)
    model = build_model("best").eval()
    images = (torch.rand(64, 1, 28, 28) * 255).to(torch.uint8)
    cpu = torch.device("cpu")
    fp32 = predict_proba(model, images, runtime=Runtime(cpu, "fp32"))
    bf16 = predict_proba(model, images, runtime=Runtime(cpu, "bf16"))
    assert torch.equal(fp32, bf16)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():  # bf16 would differ
        autocast = F.softmax(model(as_input(images)).float(), dim=1)
    assert not torch.equal(fp32, autocast)
