"""The model shipped inside the package: it loads, still scores what its metadata says, and
answers `predict` and `serve` without a checkpoint."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import run_main
from fastapi.testclient import TestClient
from PIL import Image

from mnist_cnn import evaluate, load_pretrained
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.models import checkpoint
from mnist_cnn.models.checkpoint import META_KEY, PRETRAINED_SHA256, pretrained_path


def test_shipped_weights_score_what_their_metadata_says(mnist):
    model, meta = load_pretrained()
    assert meta.recipe.model == "best" and meta.recipe.seed == 0 and meta.dataset == "mnist"
    assert meta.checksums == mnist.checksums  # trained on these very files
    assert pretrained_path().stat().st_size < 4 * 2**20
    measured = evaluate(model, mnist.test).accuracy
    # fp32 kernels of another CPU may flip an image or two whose two best classes nearly tie
    assert abs(measured - meta.metrics["test_accuracy"]) <= 3 / 10_000
    assert measured >= 0.995


def digit_photo(mnist, index: int, path) -> int:
    """An MNIST test digit as a photo would show it: dark ink on light paper, 5 times larger."""
    image = 255 - mnist.test.images[index, 0].numpy()
    Image.fromarray(np.kron(image, np.ones((5, 5), np.uint8))).save(path)
    return int(mnist.test.labels[index])


def test_predict_needs_no_checkpoint(mnist, tmp_path):
    labels = [digit_photo(mnist, i, tmp_path / f"{i}.png") for i in range(3)]
    code, out, err = run_main(["predict", *(str(tmp_path / f"{i}.png") for i in range(3)),
                               "--json", "--threads", "1"])
    assert code == 0, err
    answers = json.loads(out)
    assert [int(a["digit"]) for a in answers] == labels


def test_serve_answers_with_the_shipped_model(mnist, tmp_path):
    from mnist_cnn.server import create_app

    label = digit_photo(mnist, 7, tmp_path / "seven.png")
    client = TestClient(create_app([pretrained_path()]))
    assert client.get("/api/model").json()["models"] == ["best"]
    answer = client.post("/api/predict", content=(tmp_path / "seven.png").read_bytes()).json()
    assert int(answer["digit"]) == label


def test_a_fresh_install_reads_a_drawn_digit_without_any_data(tmp_path):
    """No MNIST anywhere (no $MNIST_DATA_DIR, an empty cache): the shipped model still answers."""
    import os
    import subprocess
    import sys

    from PIL import ImageDraw

    photo = Image.new("L", (120, 140), 255)
    ImageDraw.Draw(photo).line([(25, 25), (95, 25), (50, 120)], fill=20, width=10)  # a 7
    photo.save(tmp_path / "seven.png")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DATA_DIR")}
    env["MNIST_CNN_CACHE"] = str(tmp_path / "empty-cache")
    result = subprocess.run([sys.executable, "-m", "mnist_cnn.cli", "predict",
                             str(tmp_path / "seven.png"), "--json", "--threads", "1"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)[0]
    assert answer["digit"] == "7" and answer["is_digit"] is True
    assert not (tmp_path / "empty-cache").exists()  # nothing was fetched or cached


def test_the_shipped_model_says_how_long_it_trained():
    _, meta = load_pretrained()
    # 15 epochs of the `best` recipe, then 2 on notebook photos with outlier exposure
    # (benchmarks/build_pretrained.py)
    assert meta.earlier_epochs == 15 and meta.epoch == 2 and meta.recipe.outlier_exposure > 0
    assert meta.trained_for() == "after 17 epochs (15, then 2 with the recipe recorded)"
    assert meta.temperature is not None and meta.digit_threshold is not None  # calibrated


def test_evaluate_needs_no_checkpoint(mnist_data_dir):
    code, out, err = run_main(["evaluate", "--data-dir", str(mnist_data_dir), "--show", "0",
                               "--threads", "1"])
    assert code == 0, err
    assert out.startswith("the model shipped with mnist-cnn: best after 17 epochs")


def test_the_shipped_file_is_the_one_pinned():
    # rebuilding it (benchmarks/build_pretrained.py) means pinning its new hash in checkpoint.py
    assert hashlib.sha256(pretrained_path().read_bytes()).hexdigest() == PRETRAINED_SHA256


def test_a_damaged_shipped_model_is_refused_in_one_line(mnist, tmp_path, monkeypatch):
    """One weight changed, finite and in range, so that only the pinned SHA-256 can tell."""
    from safetensors.torch import load, save

    from mnist_cnn.server import create_app

    raw = pretrained_path().read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    tensors = load(raw)
    tensors["model.0.weight"][0, 0, 0, 0] = 0.25
    damaged = tmp_path / "pretrained" / "mnist-best.safetensors"
    damaged.parent.mkdir()
    damaged.write_bytes(save(tensors, metadata={META_KEY: header["__metadata__"][META_KEY]}))
    monkeypatch.setattr(checkpoint, "SHIPPED", damaged)
    digit_photo(mnist, 0, tmp_path / "digit.png")
    for argv in (["predict", str(tmp_path / "digit.png")],
                 ["predict", "--number", str(tmp_path / "digit.png")],
                 ["evaluate", str(damaged)]):
        code, out, err = run_main([*argv, "--threads", "1"])
        assert code == 1 and out == ""
        assert err == (f"mnist-cnn: error: {damaged}: the model shipped with mnist-cnn is "
                       "damaged (not the file it was built with); reinstall mnist-cnn\n")
    with pytest.raises(MnistCnnError, match="reinstall mnist-cnn"):
        create_app([pretrained_path()])
