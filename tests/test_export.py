"""`mnist-cnn export`: ONNX files that give PyTorch's probabilities, with a sidecar describing them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import run_main

from mnist_cnn.errors import MnistCnnError
from mnist_cnn.inference import export
from mnist_cnn.inference.evaluation import evaluate, predict_proba
from mnist_cnn.inference.export import check_parity, export_onnx, onnx_proba, onnx_session, sidecar_path
from mnist_cnn.models.checkpoint import load_checkpoint
from mnist_cnn.models.registry import as_input, build_model

ONE_CPU = ["--threads", "1"]  # the 2 cores are shared: one thread avoids fighting other jobs
PARITY_LINE = re.compile(r"^parity: (\d+)/(\d+) same class, max \|Δp\| = (\S+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """The trained checkpoint exported by the command, with its parity check on the test set."""
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    code, out, err = run_main(["export", str(models.checkpoint), "--onnx", str(path), *ONE_CPU])
    return code, out, err, path


def test_cli_export_checks_parity_on_the_whole_test_set(exported):
    code, out, err, path = exported
    assert code == 0, err
    same, count, diff = PARITY_LINE.search(out).groups()
    assert same == count == "10000"
    assert float(diff) < 1e-4
    assert f"wrote {path}" in out and path.is_file() and sidecar_path(path).is_file()


def test_onnx_checker_and_signature(exported):
    model = onnx.load(str(exported[3]))
    onnx.checker.check_model(model)
    (image,), (probabilities,) = model.graph.input, model.graph.output
    assert (image.name, probabilities.name) == ("image", "probabilities")
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == ["batch", 1, 28, 28]
    assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("batch", [1, 37])
def test_dynamic_batch_gives_probabilities(models, exported, batch):
    images = models.data.test.images[:batch]
    got = onnx_session(exported[3]).run(["probabilities"], {"image": as_input(images).numpy()})[0]
    assert got.shape == (batch, 10)
    assert np.allclose(got.sum(1), 1.0, atol=1e-5)
    expected = predict_proba(load_checkpoint(models.checkpoint)[0], images).numpy()
    assert np.abs(got - expected).max() < 1e-4


def test_parity_on_the_full_test_set(models, exported):
    model, _ = load_checkpoint(models.checkpoint)
    test = models.data.test
    result = check_parity(model, exported[3], test.images, test.labels)
    assert result["count"] == result["same_class"] == 10_000
    assert result["max_abs_diff"] < 1e-4 and result["ok"]
    assert result["accuracy"] == pytest.approx(evaluate(model, test).accuracy, abs=1e-9)


def test_sidecar_documents_the_input(models, exported):
    card = json.loads(sidecar_path(exported[3]).read_text())
    assert card["model"] == "simple" and card["dataset"] == "mnist"
    assert card["classes"] == [str(d) for d in range(10)]
    assert card["source_checkpoint"] == str(models.checkpoint)
    assert 0.9 < card["test_accuracy"] < 1
    assert card["input"]["name"] == "image" and card["input"]["shape"] == ["batch", 1, 28, 28]
    assert card["input"]["range"] == [0.0, 1.0] and card["input"]["dtype"] == "float32"
    assert "white ink" in card["input"]["polarity"]
    assert card["preprocessing"]["ink_box_longer_side"] == 20
    assert card["preprocessing"]["centre_of_mass"] == [14.0, 14.0]
    assert card["output"] == {"name": "probabilities", "shape": ["batch", 10],
                              "meaning": card["output"]["meaning"]}
    assert "softmax" in card["output"]["meaning"]


@pytest.mark.parametrize("name", ["deep", "fast", "upright", "widthnorm", "views"])
def test_other_networks_export_in_eval_mode(name, models, tmp_path):
    model = build_model(name)
    for m in model.modules():  # running statistics that matter, so eval mode must be exported
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.to(memory_format=torch.channels_last).eval()
    path = export_onnx(model, tmp_path / f"{name}.onnx")
    result = check_parity(model, path, models.data.test.images[:300])
    assert result["ok"], result
    assert not model.training  # the caller's model is left as it was


def test_no_check_skips_parity(models, tmp_path):
    path = tmp_path / "model.onnx"
    code, out, _ = run_main(["export", str(models.checkpoint), "--onnx", str(path), "--no-check",
                             *ONE_CPU])
    assert code == 0 and "parity:" not in out
    assert json.loads(sidecar_path(path).read_text())["test_accuracy"] is None
    got = onnx_proba(onnx_session(path), models.data.test.images[:50])
    assert got.shape == (50, 10)


def test_failed_parity_writes_nothing(models, tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    monkeypatch.setattr(export, "check_parity", lambda *a, **k: {
        "count": 10, "same_class": 9, "max_abs_diff": 0.3, "ok": False, "accuracy": 0.5})
    code, out, err = run_main(["export", str(models.checkpoint), "--onnx", str(path), *ONE_CPU])
    assert code == 1
    assert "parity: 9/10 same class, max |Δp| = 3.0e-01" in out
    assert "disagrees with PyTorch" in err and not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_exporting_a_non_checkpoint_is_an_error(tmp_path):
    fake = tmp_path / "photo.png"
    fake.write_bytes(b"\x89PNG not really")
    path = tmp_path / "model.onnx"
    code, out, err = run_main(["export", str(fake), "--onnx", str(path), *ONE_CPU])
    assert code == 1 and out == ""
    assert err.startswith("mnist-cnn: error: ") and "not a readable checkpoint" in err
    assert not path.exists() and not sidecar_path(path).exists()


class Boom(Exception):
    pass


def test_a_failed_export_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"the previous model")

    def fail(*args, **kwargs):
        raise Boom("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises((Boom, MnistCnnError)):
        export_onnx(build_model("simple"), path)
    assert path.read_bytes() == b"the previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary left behind


def test_an_existing_file_is_replaced(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"the previous model")
    export_onnx(build_model("simple"), path)
    onnx.checker.check_model(onnx.load(str(path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_missing_onnxscript_is_explained(monkeypatch, tmp_path):
    calls = []

    def legacy_fails(*args, dynamo, **kwargs):
        calls.append(dynamo)
        raise RuntimeError("the TorchScript exporter is gone")

    monkeypatch.setattr(torch.onnx, "export", legacy_fails)
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MnistCnnError, match="pip install onnxscript"):
        export_onnx(build_model("simple"), tmp_path / "m.onnx")
    assert calls == [False]


def test_parity_detects_a_different_model(models, exported):
    other, _ = load_checkpoint(models.other)
    result = check_parity(other, Path(exported[3]).read_bytes(), models.data.test.images[:200])
    assert not result["ok"] and result["max_abs_diff"] > 1e-3
