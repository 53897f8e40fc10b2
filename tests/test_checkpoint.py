"""Checkpoints: round trips, atomic writes, and every kind of bad file refused with our error."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO, run_main
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from mnist_cnn.errors import MnistCnnError
from mnist_cnn.models.checkpoint import (
    CHECKPOINT_NAME,
    META_KEY,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from mnist_cnn.models.recipes import Recipe
from mnist_cnn.models.registry import as_input, build_model, recipe_for
from mnist_cnn.training.loop import train


def perturbed(name: str = "simple"):
    """A network whose weights differ from what its recipe would build."""
    model = build_model(name)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def save_unchecked(path: pathlib.Path, model: torch.nn.Module, meta: dict) -> None:
    """A file that save_checkpoint refuses to write: the readers' refusals are under test."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    meta = {"format": "mnist-cnn-checkpoint", "version": 1, **meta}
    path.write_bytes(save_tensors(tensors, metadata={META_KEY: json.dumps(meta)}))


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


def test_digit_threshold_round_trip(tmp_path):
    path = tmp_path / "c.safetensors"
    meta = {"recipe": recipe_for("simple").to_dict(), "digit_threshold": 0.8125}
    save_checkpoint(path, build_model("simple"), meta)
    _, loaded = load_checkpoint(path)
    assert loaded.digit_threshold == 0.8125
    assert loaded.to_dict()["digit_threshold"] == 0.8125
    # a checkpoint that was never calibrated has none, and does not write the key
    save_checkpoint(path, build_model("simple"), {"recipe": recipe_for("simple").to_dict()})
    _, loaded = load_checkpoint(path)
    assert loaded.digit_threshold is None and "digit_threshold" not in loaded.to_dict()


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), -0.1, 1.5, "0.9", True, [0.9]])
def test_a_bad_digit_threshold_is_refused(tmp_path, threshold):
    path = tmp_path / "c.safetensors"
    meta = {"format": "mnist-cnn-checkpoint", "version": 1,
            "recipe": recipe_for("simple").to_dict(), "digit_threshold": threshold}
    tensors = {f"model.{k}": v for k, v in build_model("simple").state_dict().items()}
    # json.dumps writes NaN and Infinity, which Python's reader takes back: they must be refused
    path.write_bytes(save_tensors(tensors, metadata={META_KEY: json.dumps(meta)}))
    with pytest.raises(MnistCnnError, match="'digit_threshold' must be a probability"):
        load_checkpoint(path)


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
    with pytest.raises(MnistCnnError, match=re.escape(f"{path}: cannot write it (No space left")):
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


def test_a_folder_without_a_runs_checkpoint_is_refused(tmp_path):
    with pytest.raises(MnistCnnError, match="a folder without a training run's checkpoint"):
        load_checkpoint(tmp_path)


def test_a_training_runs_folder_names_its_checkpoint(tmp_path, batch):
    # `train --out runs/x` says "checkpoints in runs/x": that folder is what users name next
    model = perturbed().eval()
    save_checkpoint(tmp_path / CHECKPOINT_NAME, model,
                    {"recipe": recipe_for("simple").to_dict(), "epoch": 1})
    loaded, meta = load_checkpoint(tmp_path)
    assert meta.epoch == 1
    assert torch.equal(loaded.eval()(batch), model(batch))


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
    save_unchecked(path, build_model("simple"),
                   {"recipe": recipe_for("simple").to_dict(), "version": 2})
    with pytest.raises(MnistCnnError, match="version 2 is newer"):
        load_checkpoint(path)


def test_unknown_model_in_the_recipe(tmp_path):
    path = tmp_path / "c.safetensors"
    recipe = recipe_for("simple").to_dict() | {"model": "transformer"}
    save_unchecked(path, build_model("simple"), {"recipe": recipe})
    with pytest.raises(MnistCnnError, match="unknown model 'transformer'"):
        load_checkpoint(path)


def test_checkpoint_of_another_model_than_expected(saved):
    path, _ = saved
    with pytest.raises(MnistCnnError, match="a checkpoint of model 'simple', expected 'deep'"):
        load_checkpoint(path, expect_model="deep")


def test_weights_that_do_not_fit_the_recipes_network(tmp_path):
    path = tmp_path / "liar.safetensors"
    save_unchecked(path, build_model("simple"), {"recipe": recipe_for("deep").to_dict()})
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


# --------------------------------------------------------------------------------------------
# Tampered checkpoints (issue 10): every reader refuses them with one line, before any network or
# optimizer sees them.

TINY = recipe_for("simple").replace(epochs=1, batch_size=100)  # 6 steps on the tiny dataset


@pytest.fixture(scope="module")
def resumable(tiny_dataset, runtime, tmp_path_factory) -> pathlib.Path:
    """A real training checkpoint (weights, Adam state, RNG state, history) of one tiny epoch."""
    out = tmp_path_factory.mktemp("resumable")
    train(build_model(TINY), tiny_dataset, TINY, runtime, out, progress=False, log=lambda _: None)
    return out / CHECKPOINT_NAME


def unpack(path: pathlib.Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A checkpoint's tensors and raw metadata, read without any of our checks."""
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    return load_tensors(raw), json.loads(header["__metadata__"][META_KEY])


def pack(path: pathlib.Path, tensors: dict[str, torch.Tensor], meta: dict) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(save_tensors(tensors, metadata={META_KEY: json.dumps(meta)}))
    return path


def tampered(source: pathlib.Path, target: pathlib.Path, change) -> pathlib.Path:
    tensors, meta = unpack(source)
    change(tensors, meta)
    return pack(target, tensors, meta)


def assert_one_line_error(e: pytest.ExceptionInfo, path: pathlib.Path) -> None:
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")


def setitem(where: str, key: str, value):
    def change(tensors, meta):
        target = meta if where == "meta" else meta["recipe"]
        target[key] = value
    return change


def fast_checkpoint(tmp_path: pathlib.Path, **model_args) -> pathlib.Path:
    recipe = recipe_for("fast")
    path = tmp_path / "fast.safetensors"
    save_checkpoint(path, build_model(recipe), {"recipe": recipe.to_dict()})
    return tampered(path, path, setitem("recipe", "model_args", {**recipe.model_args,
                                                                **model_args}))


@pytest.mark.parametrize(("model_args", "problem"), [
    ({"widths": "wide"}, "expected a list of 4 integers"),
    ({"widths": ["16", "16", "32", "64"]}, "expected a list of 4 integers"),
    ({"crop": 24.5}, "expected a int"),
    ({"depth": 3}, "takes no argument 'depth'"),
    ({"widths": [2 ** 20] * 4}, "parameters (limit"),  # would be terabytes, if built for real
    ({"widths": [0, 16, 32, 64]}, "do not make a working"),
    ({"crop": 29}, "do not make a working"),  # larger than the image: shapes stop matching
])
def test_tampered_model_args_are_refused_before_building(tmp_path, model_args, problem):
    path = fast_checkpoint(tmp_path, **model_args)
    with pytest.raises(MnistCnnError, match=re.escape(problem)) as e:
        load_checkpoint(path)
    assert_one_line_error(e, path)


def test_untampered_model_args_still_load(tmp_path):
    model, meta = load_checkpoint(fast_checkpoint(tmp_path, widths=[16, 16, 32, 64]))
    assert meta.recipe.model_args == {"crop": 24, "standardize": True, "widths": [16, 16, 32, 64]}
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def nan_weight(tensors, meta):
    tensors["model.0.weight"][0, 0, 0, 0] = float("nan")


def inf_weight(tensors, meta):
    tensors["model.7.bias"][3] = float("-inf")


def huge_weight(tensors, meta):
    """Finite, so the finite check passes: once, it made a clear 7 read "3, 100%"."""
    tensors["model.0.weight"][0, 0, 0, 0] = 1e4


def rename(old: str, new: str):
    def change(tensors, meta):
        tensors[new] = tensors.pop(old)
    return change


def replace_tensor(name: str, value: torch.Tensor):
    def change(tensors, meta):
        tensors[name] = value
    return change


@pytest.mark.parametrize(("change", "problem"), [
    (setitem("recipe", "model_args", "crop"), "wrong type of model_args"),
    (setitem("recipe", "model", 7), "wrong type of model"),
    (setitem("recipe", "batch_size", "100"), "wrong type of batch_size"),
    (setitem("recipe", "epochs", 1e308 * 10), "wrong type of epochs"),  # Infinity in JSON
    (setitem("recipe", "seed", 2 ** 70), "seed must be below"),
    (setitem("meta", "classes", list("012345678")), "9 class names for a network of 10 outputs"),
    (setitem("meta", "classes", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), "'classes' must be a list"),
    (setitem("meta", "metrics", "excellent"), "'metrics' must map"),
    (setitem("meta", "history", [{"epoch": "one"}]), "'history' must be"),
    (setitem("meta", "history", {"epoch": 1}), "'history' must be"),
    (setitem("meta", "step", "6"), "'step' must be a non-negative integer"),
    (setitem("meta", "step", 6.5), "'step' must be a non-negative integer"),
    (setitem("meta", "step", -24), "'step' must be a non-negative integer"),
    (setitem("meta", "epoch", True), "'epoch' must be a non-negative integer"),
    (setitem("meta", "earlier_epochs", -15), "'earlier_epochs' must be a non-negative integer"),
    (setitem("meta", "dataset", ["mnist"]), "unknown dataset"),
    (setitem("meta", "optimizer", {"param_groups": "all"}), "'optimizer' must hold"),
    (nan_weight, "model.0.weight holds NaN or infinite values"),
    (inf_weight, "model.7.bias holds NaN or infinite values"),
    (huge_weight, "model.0.weight holds 1e+04, far beyond what training reaches"),
    (rename("optim.0.exp_avg", "optim.x.exp_avg"), "unexpected tensor 'optim.x.exp_avg'"),
    (rename("optim.0.exp_avg", "optim.0"), "unexpected tensor 'optim.0'"),
    (rename("optim.0.exp_avg", "optim.9.exp_avg"), "optim.9.exp_avg does not fit"),
    (rename("optim.0.exp_avg", "optim.0.velocity"), "optim.0.velocity does not fit"),
    (rename("optim.0.exp_avg", "optim.00.exp_avg"), "unexpected tensor"),
    (replace_tensor("optim.0.exp_avg", torch.zeros(3)), "optim.0.exp_avg is (3,) float32"),
    (replace_tensor("optim.0.step", torch.zeros(2)), "optim.0.step is (2,) float32"),
    (replace_tensor("optim.0.exp_avg_sq", torch.zeros(32, 1, 3, 3, dtype=torch.float64)),
     "float64"),
    (replace_tensor("optim.1.exp_avg", torch.full((64, 32, 3, 3), float("nan"))), "NaN"),
    (replace_tensor("rng.torch", torch.get_rng_state().to(torch.int32)), "RNG state"),
    (replace_tensor("rng.torch", torch.get_rng_state()[:100]), "RNG state"),
    (replace_tensor("model.0.weight", torch.zeros(32, 1, 3, 3, dtype=torch.float16)),
     "model.0.weight is (32, 1, 3, 3) float16"),
    (rename("model.7.bias", "model.7.biases"), "missing model.7.bias"),
    # JSON integers have no size limit, floats do: 10**400 is no number
    (setitem("meta", "digit_threshold", 10 ** 400), "'digit_threshold' must be a probability"),
    (setitem("meta", "metrics", {"cost": 10 ** 400}), "'metrics' must map"),
    (setitem("meta", "history", [{"epoch": 1, "cost": -10 ** 400}]), "'history' must be"),
    (setitem("recipe", "lr", 10 ** 400), "wrong type of lr"),
    (setitem("recipe", "epochs", 10 ** 400), "wrong type of epochs"),
    (setitem("recipe", "dropout", 10 ** 400), "wrong type of dropout"),
    (setitem("recipe", "batch_size", 10 ** 400), "batch size must be positive (at most"),
])
def test_tampered_checkpoints_are_one_line_errors(resumable, tmp_path, change, problem):
    path = tampered(resumable, tmp_path / "bad.safetensors", change)
    with pytest.raises(MnistCnnError, match=re.escape(problem)) as e:
        load_checkpoint(path)
    assert_one_line_error(e, path)


def test_a_number_thousands_of_digits_long_is_one_line(resumable, tmp_path):
    """Python refuses to parse integers of over 4,300 digits (a ValueError, not JSON's error)."""
    tensors, meta = unpack(resumable)
    text = json.dumps(meta).replace('"format"', f'"digit_threshold": 1{"0" * 5000}, "format"')
    path = tmp_path / "long.safetensors"
    path.write_bytes(save_tensors(tensors, metadata={META_KEY: text}))
    with pytest.raises(MnistCnnError, match="thousands of digits") as e:
        load_checkpoint(path)
    assert_one_line_error(e, path)


def test_a_huge_version_number_is_shown_short(resumable, tmp_path):
    path = tampered(resumable, tmp_path / "v.safetensors", setitem("meta", "version", 10 ** 400))
    with pytest.raises(MnistCnnError, match="is newer") as e:
        load_checkpoint(path)
    assert len(str(e.value)) < 200 + len(str(path))


def test_a_running_variance_may_be_the_square_of_a_weight_bound(tmp_path):
    path = fast_checkpoint(tmp_path)
    tampered(path, path, replace_tensor("model.6.running_var", torch.full((16,), 1e5)))
    load_checkpoint(path)  # large for a weight, not for a variance (a square)
    tampered(path, path, replace_tensor("model.6.running_var", torch.full((16,), 1e7)))
    with pytest.raises(MnistCnnError, match="model.6.running_var holds 1e\\+07, far beyond"):
        load_checkpoint(path)


def test_real_checkpoints_stay_far_inside_the_bounds(models):
    """The shipped model and a freshly trained one: a hundred times below the bounds."""
    from mnist_cnn.models.checkpoint import MAX_VARIANCE, MAX_WEIGHT, pretrained_path

    for path in (pretrained_path(), models.checkpoint):
        tensors, _ = read_checkpoint(path)
        for name, t in tensors.items():
            if name.startswith("model.") and t.is_floating_point():
                limit = MAX_VARIANCE if name.endswith(".running_var") else MAX_WEIGHT
                assert float(t.abs().max()) < limit / 100, (path, name)


def test_a_checkpoint_without_an_epoch_still_evaluates(models, tmp_path):
    path = tampered(models.checkpoint, tmp_path / "c.safetensors",
                    lambda tensors, meta: meta.pop("epoch"))
    code, out, err = run_main(["evaluate", str(path), "--show", "0", "--threads", "1"])
    assert code == 0, err
    assert "simple after epoch ?" in out


@pytest.mark.parametrize(("change", "problem"), [
    (lambda tensors, meta: meta.pop("epoch"), "records no epoch"),
    (lambda tensors, meta: meta.pop("optimizer"), "no optimizer state"),
    (setitem("meta", "checksums", {"train-images-idx3-ubyte": "0" * 64}), "checksums differ"),
    # a resumed run's errors come before any training, not after a whole epoch of it
    (setitem("meta", "history", [{"epoch": 1, "step": 6}]), None),
])
def test_tampered_resume_fails_before_training(resumable, tiny_dataset, runtime, tmp_path,
                                               change, problem):
    tampered(resumable, tmp_path / CHECKPOINT_NAME, change)
    model = build_model(TINY)
    steps = []
    model.register_forward_pre_hook(lambda m, _inp: steps.append(1) if m.training else None)
    recipe = TINY.replace(epochs=1.5)
    if problem is None:  # malformed for plots, but fine for training: it resumes
        result = train(model, tiny_dataset, recipe, runtime, tmp_path, resume=True,
                       progress=False, log=lambda _: None)
        assert [r["epoch"] for r in result.history] == [1, 2] and len(steps) == 3
        return
    with pytest.raises(MnistCnnError, match=problem) as e:
        train(model, tiny_dataset, recipe, runtime, tmp_path, resume=True, progress=False,
              log=lambda _: None)
    assert_one_line_error(e, tmp_path / CHECKPOINT_NAME)
    assert steps == []


RESUME_IN_A_SUBPROCESS = """
import sys
sys.path.insert(0, sys.argv[2])
from conftest import synthetic_arrays
from mnist_cnn.data.dataset import make_dataset
from mnist_cnn.data.sources import DATASETS
from mnist_cnn.runtime.device import setup
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.models.registry import build_model, recipe_for
from mnist_cnn.training.loop import train

data = make_dataset(synthetic_arrays(), DATASETS["mnist"], "synthetic", val_size=100)
recipe = recipe_for("simple").replace(epochs=2, batch_size=100)
try:
    train(build_model(recipe), data, recipe, setup("cpu", threads=1), sys.argv[1], resume=True,
          progress=False, log=lambda _: None)
except MnistCnnError as e:
    print(e)
    sys.exit(1)
"""


def test_optimizer_state_of_the_wrong_size_cannot_crash_the_process(resumable, tmp_path):
    """Fused Adam writes through its state tensors unchecked: a 3-element exp_avg once made
    `train --resume` segfault. In a subprocess, so that a crash fails this test, not pytest."""
    tampered(resumable, tmp_path / CHECKPOINT_NAME,
             replace_tensor("optim.0.exp_avg", torch.zeros(3)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", RESUME_IN_A_SUBPROCESS, str(tmp_path),
                           str(REPO / "tests")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stdout.strip().endswith("optimizer state optim.0.exp_avg is (3,) float32, "
                                        "needed: (32, 1, 3, 3) float32")


def test_unreadable_file_is_one_line(saved, monkeypatch):
    path, _ = saved
    path.chmod(0)
    if os.geteuid() == 0:  # root reads whatever the permissions say: refuse as the kernel would
        def refuse(self, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(self))
        monkeypatch.setattr(pathlib.Path, "open", refuse)
    with pytest.raises(MnistCnnError, match="cannot read the checkpoint \\(Permission denied\\)"
                       ) as e:
        load_checkpoint(path)
    assert_one_line_error(e, path)


def test_huge_file_is_refused_unread(tmp_path):
    path = tmp_path / "huge.safetensors"
    with path.open("wb") as f:
        f.truncate(3 * 2 ** 30)  # sparse: 3 GB that take no disk space
    with pytest.raises(MnistCnnError, match="over 256 MiB") as e:
        load_checkpoint(path)
    assert_one_line_error(e, path)


def test_old_checkpoints_keep_loading(resumable, tmp_path):
    """The JSON keys are those save_checkpoint has always written, extra ones kept as they were."""
    path = tampered(resumable, tmp_path / "c.safetensors", setitem("meta", "scheduler", {"a": 1}))
    tensors, meta = read_checkpoint(path)
    assert meta.extra == {"scheduler": {"a": 1}}
    assert json.loads(json.dumps(meta.to_dict())) == unpack(path)[1]


# --------------------------------------------------------------------------------------------
# Fuzzing: mutations of a real checkpoint, through every reader

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=8)
# values a tampered or damaged file is likely to hold: right types, nearly right values
PLAUSIBLE = st.sampled_from([0, 1, 2, 6, -1, 0.5, 1e-3, 100, 2 ** 40, "adam", "sgd", "onecycle",
                             "none", "mnist", "fashion-mnist", "simple", "deep", "fast",
                             [0.9, 0.999], list("0123456789"), {}, [], {"crop": 24},
                             [{"epoch": 1}], {"val_accuracy": 0.5}])
VALUE = PLAUSIBLE | JSON
# (hypothesis starts from the first entries: the fields most often accepted come first)
META_FIELDS = ["epoch", "step", "metrics", "history", "classes", "dataset", "checksums",
               "optimizer", "recipe", "version", "format"]
RECIPE_FIELDS = [f.name for f in reversed(dataclasses.fields(Recipe))]
TENSOR_NAMES = ["model.0.weight", "model.3.weight", "model.7.weight", "model.7.bias",
                "optim.0.step", "optim.0.exp_avg", "optim.2.exp_avg_sq", "optim.3.step",
                "rng.torch"]
DTYPES = [torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool]
VALUES = [float("nan"), float("inf"), float("-inf"), 3e38, -1.0, 0.0]


@st.composite
def mutations(draw):
    """(description, change(tensors, meta) or None, how many bytes to keep or None)."""
    kind = draw(st.sampled_from(["meta", "delete", "recipe", "record", "shape", "dtype", "value",
                                 "rename", "drop", "truncate"]))
    name = draw(st.sampled_from(TENSOR_NAMES))
    if kind == "meta":
        key, value = draw(st.sampled_from(META_FIELDS)), draw(VALUE)
        return kind, setitem("meta", key, value), None
    if kind == "delete":
        key = draw(st.sampled_from(META_FIELDS))
        return kind, lambda t, m: m.pop(key, None), None
    if kind == "recipe":
        key, value = draw(st.sampled_from(RECIPE_FIELDS)), draw(VALUE)
        return kind, setitem("recipe", key, value), None
    if kind == "record":
        where = draw(st.sampled_from(["metrics", "history"]))
        key = draw(st.sampled_from(["epoch", "step", "cost", "val_accuracy"]))
        value = draw(VALUE)

        def change(t, m):
            (m[where] if where == "metrics" else m[where][-1])[key] = value
        return kind, change, None
    if kind == "shape":
        shape = draw(st.lists(st.integers(0, 5), max_size=4))
        return kind, replace_tensor(name, torch.zeros(shape)), None
    if kind == "dtype":
        dtype = draw(st.sampled_from(DTYPES))
        return kind, lambda t, m: t.__setitem__(name, t[name].to(dtype)), None
    if kind == "value":
        value, position = draw(st.sampled_from(VALUES)), draw(st.integers(0, 100))

        def change(t, m):
            if t[name].is_floating_point():
                t[name].view(-1)[position % t[name].numel()] = value
            else:
                t[name] = t[name].float()  # an RNG state as floats
        return kind, change, None
    if kind == "rename":
        new = draw(st.sampled_from(["model.x", "optim.0", "optim.1.exp_avg", "optim.99.step",
                                    "optim.-1.step", "rng", "", "model.0.weight.x"])
                   | st.text(max_size=12))
        return kind, lambda t, m: t.__setitem__(new, t.pop(name)) if new != name else None, None
    if kind == "drop":
        return kind, lambda t, m: t.pop(name), None
    return kind, None, draw(st.floats(0, 1))


def assert_refused_in_one_line(code: int, err: str) -> None:
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mnist-cnn: error: "), err


@pytest.fixture(scope="module")
def digit_png(tiny_dataset, tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("digit") / "digit.png"
    Image.fromarray(tiny_dataset.test.images[0, 0].numpy()).save(path)
    return path


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mutation=mutations())
def test_fuzzed_checkpoints_never_crash_a_reader(mutation, resumable, digit_png, tiny_dataset,
                                                 runtime, tmp_path_factory):
    kind, change, keep = mutation
    out = tmp_path_factory.mktemp("fuzz")
    path = out / CHECKPOINT_NAME
    if change is not None:
        tampered(resumable, path, change)
    else:
        raw = resumable.read_bytes()
        path.write_bytes(raw[:int(len(raw) * keep)])

    try:
        model, meta = load_checkpoint(path)
    except MnistCnnError as e:
        accepted = False
        assert "\n" not in str(e) and str(e).startswith(f"{path}: ")
    else:
        accepted = True
        assert torch.isfinite(model(torch.rand(4, 1, 28, 28))).all()
    event(f"{kind}: {'accepted' if accepted else 'refused'}")

    # the resume path of train(): a few steps on the tiny dataset, or one refusal before any
    recipe = TINY.replace(epochs=1.5)
    try:
        train(build_model(recipe), tiny_dataset, recipe, runtime, out, resume=True,
              progress=False, log=lambda _: None)
    except MnistCnnError as e:
        assert "\n" not in str(e)
    path = tampered(resumable, out / "c.safetensors", change) if change else path

    threads = ["--threads", "1"]
    code, out_text, err = run_main(["predict", str(path), str(digit_png), "--json", *threads])
    if code == 0:
        probabilities = [t["probability"] for r in json.loads(out_text) for t in r["top_k"]]
        assert all(isinstance(p, float) and 0 <= p <= 1 for p in probabilities)
    else:
        assert_refused_in_one_line(code, err)
    code, _, err = run_main(["export", str(path), "--onnx", str(out / "m.onnx"), "--no-check",
                             *threads])
    if code:
        assert_refused_in_one_line(code, err)
    if not accepted:  # accepted ones evaluate the whole test set: done once, below
        assert_refused_in_one_line(*run_main(["evaluate", str(path), *threads])[::2])


def test_an_accepted_mutation_evaluates(resumable, tmp_path):
    """evaluate on a checkpoint whose harmless fields were changed (the fuzz test leaves out
    evaluate for accepted files: each run reads the whole test set)."""
    path = tampered(resumable, tmp_path / "c.safetensors", setitem("meta", "metrics", {}))
    code, out, err = run_main(["evaluate", str(path), "--show", "0", "--threads", "1"])
    assert code == 0, err
    assert "simple after epoch 1" in out


@pytest.mark.parametrize("change", [nan_weight, huge_weight,
                                    setitem("meta", "classes", list("0123456789x"))])
def test_commands_refuse_a_damaged_checkpoint_in_one_line(resumable, digit_png, tmp_path, change):
    """Once: predict printed "8 (nan%)" and exited 0, export wrote the NaN model, and the server
    answered "probability": null (or 500 to every request, for the wrong number of classes)."""
    from mnist_cnn.server import create_app

    path = tampered(resumable, tmp_path / "bad.safetensors", change)
    for argv in (["predict", str(path), str(digit_png)], ["evaluate", str(path)],
                 ["export", str(path), "--onnx", str(tmp_path / "m.onnx"), "--no-check"]):
        assert_refused_in_one_line(*run_main([*argv, "--threads", "1"])[::2])
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(MnistCnnError, match=re.escape(str(path))):
        create_app([path])


def test_weights_that_overflow_inside_the_bounds_are_no_answer(tiny_dataset, tmp_path,
                                                               monkeypatch):
    """Every weight 999 and every variance 0: each value in range, but the outputs overflow to
    infinity. evaluate once printed "loss nan" and exited 0."""
    import mnist_cnn.data.dataset

    model = build_model("fast")
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.fill_(0.0 if name.endswith("running_var") else 999.0)
    path = tmp_path / "overflow.safetensors"
    save_checkpoint(path, model, {"recipe": recipe_for("fast").to_dict(), "dataset": "mnist",
                                  "checksums": tiny_dataset.checksums})
    monkeypatch.setattr(mnist_cnn.data.dataset, "load_dataset", lambda *_args, **_kwargs: tiny_dataset)
    for argv in (["evaluate", str(path)], ["ensemble", "evaluate", str(path)]):
        code, out, err = run_main([*argv, "--threads", "1"])
        assert code == 1 and out == ""
        assert err == (f"mnist-cnn: error: {path}: the network's outputs are not finite numbers: "
                       "its weights are damaged\n")
