"""Temperature scaling and the expected calibration error (calibration.py), and the
temperature's way from the checkpoint to every probability shown."""

from __future__ import annotations

import pytest
import torch

from mnist_cnn import recipe_for
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.inference.calibration import Calibrated, calibration_error, fit_temperature, reliability
from mnist_cnn.models.checkpoint import CheckpointMeta


def sampled(temperature: float, n: int = 20_000, seed: int = 0):
    """Logits and labels drawn so that softmax(logits / temperature) is exactly calibrated."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 10, generator=generator) * 3
    labels = torch.multinomial((logits / temperature).softmax(1), 1, generator=generator)[:, 0]
    return logits, labels


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_the_fitted_temperature_is_the_one_that_made_the_labels(temperature):
    logits, labels = sampled(temperature)
    assert fit_temperature(logits, labels) == pytest.approx(temperature, rel=0.08)


def test_calibrated_probabilities_have_a_small_error_and_others_do_not():
    logits, labels = sampled(2.0)
    assert calibration_error((logits / 2.0).softmax(1), labels) < 0.02
    assert calibration_error(logits.softmax(1), labels) > 0.1  # over-confident by far
    points = reliability((logits / 2.0).softmax(1), labels)
    assert sum(count for _, _, count in points) == len(labels)
    assert all(abs(confidence - right) < 0.06 for confidence, right, count in points
               if count > 500)


def test_fitting_refuses_what_it_cannot_fit():
    with pytest.raises(MnistCnnError, match="finite"):
        fit_temperature(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    with pytest.raises(MnistCnnError, match="N labels"):
        fit_temperature(torch.zeros(3, 10), torch.zeros(2, dtype=torch.long))


def test_a_calibrated_network_divides_its_logits():
    network = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    assert torch.allclose(Calibrated(network, 2.0)(x), network(x) / 2.0)


@pytest.mark.parametrize("value", [0.0, -1.0, 1e9, "2", True, float("inf")])
def test_a_checkpoint_with_a_wrong_temperature_is_refused_in_one_line(value):
    meta = CheckpointMeta(recipe=recipe_for("simple")).to_dict()
    meta["temperature"] = value
    with pytest.raises(MnistCnnError, match="'temperature' must be a number") as caught:
        CheckpointMeta.from_dict(meta, "model.safetensors")
    assert "\n" not in str(caught.value)


def test_the_temperature_survives_the_checkpoint(tmp_path):
    from mnist_cnn import build_model
    from mnist_cnn.inference.ensemble import load_members
    from mnist_cnn.models.checkpoint import save_checkpoint

    recipe = recipe_for("simple")
    model = build_model(recipe)
    meta = CheckpointMeta(recipe=recipe, temperature=0.7).to_dict()
    save_checkpoint(tmp_path / "m.safetensors", model, meta)
    [(loaded, loaded_meta)] = load_members([tmp_path / "m.safetensors"])
    assert loaded_meta.temperature == 0.7 and isinstance(loaded, Calibrated)
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    model.eval()
    loaded.eval()
    from mnist_cnn.models.registry import as_input
    with torch.no_grad():
        assert torch.allclose(loaded(as_input(images)), model(as_input(images)) / 0.7, atol=1e-5)
