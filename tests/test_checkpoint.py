"""Checkpoints: round trips, atomic writes, and every kind of bad file refused with our error."""

from __future__ import annotations

import json
import os
import pathlib

import pytest
import torch
from safetensors.torch import save as save_tensors

from mnist_cnn.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.models import as_input, build_model, recipe_for


def perturbed(name: str = "simple"):
    """A network whose weights differ from what its recipe would build."""
    model = build_model(name)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture
def batch() -> torch.Tensor:
    return as_input(torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8,
                                  generator=torch.Generator().manual_seed(5)))


@pytest.fixture
def saved(tmp_path):
    model = perturbed().eval()
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model, {"recipe": recipe_for("simple").to_dict(), "epoch": 1})
    return path, model


def test_round_trip_gives_identical_outputs(tmp_path, batch):
    model = perturbed("deep").eval()
    path = tmp_path / "deep.safetensors"
    save_checkpoint(path, model, {"recipe": recipe_for("deep").to_dict()})
    loaded, _ = load_checkpoint(path)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))
        assert not torch.equal(build_model("deep").eval()(batch), model(batch))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_metadata_is_preserved(tmp_path):
    meta = {"recipe": recipe_for("simple").replace(lr=0.01, seed=7).to_dict(),
            "dataset": "mnist", "epoch": 3, "metrics": {"val_accuracy": 0.98125, "cost": 0.1},
            "history": [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}], "classes": list("0123456789")}
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, build_model("simple"), meta)
    model, loaded = load_checkpoint(path, expect_model="simple")
    assert loaded.format == "mnist-cnn-checkpoint"
    assert loaded.version == 1
    for key in ("dataset", "epoch", "metrics", "history"):
        assert getattr(loaded, key) == meta[key]
    assert list(loaded.classes) == meta["classes"]
    assert loaded.recipe == recipe_for("simple").replace(lr=0.01, seed=7)
    assert loaded.to_dict() == {"format": "mnist-cnn-checkpoint", "version": 1, **meta}


def test_optimizer_and_rng_state_are_stored(tmp_path):
    model = build_model("simple")
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(2, 1, 28, 28)).sum().backward()
    optimizer.step()
    rng = torch.get_rng_state()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model, {"recipe": recipe_for("simple").to_dict()}, optimizer, rng)
    tensors, meta = read_checkpoint(path)
    assert torch.equal(tensors["rng.torch"], rng)
    assert torch.equal(tensors["optim.0.exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert meta.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_save_leaves_no_temporary_files(saved):
    path, model = saved
    save_checkpoint(path, model, {"recipe": recipe_for("simple").to_dict(), "epoch": 2})
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert read_checkpoint(path)[1].epoch == 2


def test_failed_save_keeps_the_old_file(saved, monkeypatch):
    path, model = saved
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, build_model("simple"), {"recipe": recipe_for("simple").to_dict()})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert read_checkpoint(path)[1].epoch == 1


def test_save_creates_missing_folders(tmp_path):
    path = tmp_path / "runs" / "simple" / "last.safetensors"
    save_checkpoint(path, build_model("simple"), {"recipe": recipe_for("simple").to_dict()})
    assert path.is_file()


# --------------------------------------------------------------------------------------------
# bad files


def test_missing_file(tmp_path):
    with pytest.raises(MnistCnnError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_a_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(MnistCnnError, match="no such checkpoint file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, os.urandom(1000),
                                     b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"])
def test_unreadable_bytes(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(MnistCnnError, match="not a readable checkpoint") as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_checkpoint(saved, keep):
    path, _ = saved
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(MnistCnnError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_safetensors_without_our_metadata(tmp_path):
    path = tmp_path / "foreign.safetensors"
    path.write_bytes(save_tensors({"weight": torch.zeros(3)}))
    with pytest.raises(MnistCnnError, match="not a mnist-cnn checkpoint"):
        load_checkpoint(path)
    path.write_bytes(save_tensors({"weight": torch.zeros(3)}, metadata={"other": "tool"}))
    with pytest.raises(MnistCnnError, match="not a mnist-cnn checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("meta", [
    {"format": "something-else", "recipe": {"model": "simple"}},
    {"format": "mnist-cnn-checkpoint"},
    {"format": "mnist-cnn-checkpoint", "recipe": "simple"},
])
def test_unexpected_metadata(tmp_path, meta):
    path = tmp_path / "odd.safetensors"
    path.write_bytes(save_tensors({"model.0.weight": torch.zeros(1)},
                                  metadata={"mnist_cnn": json.dumps(meta)}))
    with pytest.raises(MnistCnnError, match="not a mnist-cnn checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("meta", [
    "[1, 2]",  # JSON, but not an object
    json.dumps({"format": "mnist-cnn-checkpoint", "recipe": {}}),  # a recipe without a model
    json.dumps({"format": "mnist-cnn-checkpoint", "version": "2", "recipe": {"model": "simple"}}),
])
def test_malformed_metadata_is_our_error(tmp_path, meta):
    """Hand-made or damaged headers are reported like every other bad file, not as a crash."""
    path = tmp_path / "odd.safetensors"
    path.write_bytes(save_tensors({"model.0.weight": torch.zeros(1)},
                                  metadata={"mnist_cnn": meta}))
    with pytest.raises(MnistCnnError):
        load_checkpoint(path)


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "future.safetensors"
    save_checkpoint(path, build_model("simple"),
                    {"recipe": recipe_for("simple").to_dict(), "version": 2})
    with pytest.raises(MnistCnnError, match="version 2 is newer"):
        load_checkpoint(path)


def test_unknown_model_in_the_recipe(tmp_path):
    path = tmp_path / "c.safetensors"
    recipe = recipe_for("simple").to_dict() | {"model": "transformer"}
    save_checkpoint(path, build_model("simple"), {"recipe": recipe})
    with pytest.raises(MnistCnnError, match="unknown model 'transformer'"):
        load_checkpoint(path)


def test_checkpoint_of_another_model_than_expected(saved):
    path, _ = saved
    with pytest.raises(MnistCnnError, match="a checkpoint of model 'simple', expected 'deep'"):
        load_checkpoint(path, expect_model="deep")


def test_weights_that_do_not_fit_the_recipes_network(tmp_path):
    path = tmp_path / "liar.safetensors"
    save_checkpoint(path, build_model("simple"), {"recipe": recipe_for("deep").to_dict()})
    with pytest.raises(MnistCnnError, match="do not fit") as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)
    assert "wrong shape" in str(e.value) or "missing" in str(e.value)


class TouchOnUnpickle:
    def __init__(self, target: pathlib.Path) -> None:
        self.target = target

    def __reduce__(self):
        return pathlib.Path.touch, (self.target,)


def test_pickle_checkpoints_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"state": TouchOnUnpickle(marker)}, path)
    # the file really is dangerous to unpickle ...
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    # ... and loading it as a checkpoint refuses it without running it
    with pytest.raises(MnistCnnError, match="not a readable checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()
