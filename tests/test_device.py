"""Device handling lives in one small place; CPU and GPU runs go through the same code."""

import inspect

import pytest
import torch

from mnist_cnn import device, training
from mnist_cnn.device import Runtime, choose_device, setup
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.models import build_model, recipe_for


def test_auto_picks_cuda_only_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device("auto") == torch.device("cuda")


def test_asking_for_a_missing_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MnistCnnError, match="no CUDA GPU"):
        choose_device("cuda")
    with pytest.raises(MnistCnnError, match="unknown device"):
        choose_device("tpu")
    with pytest.raises(MnistCnnError, match="precision"):
        setup("cpu", "fp16")


def test_bf16_falls_back_to_fp32_where_not_native(monkeypatch):
    monkeypatch.setattr(device, "bf16_supported", lambda dev: False)
    assert setup("cpu", "bf16", threads=1).precision == "fp32"
    monkeypatch.setattr(device, "bf16_supported", lambda dev: True)
    assert setup("cpu", "bf16", threads=1).precision == "bf16"


def test_only_training_asks_for_the_allocator_tuning(monkeypatch):
    calls = []
    monkeypatch.setattr(device, "tune_cpu_allocator", lambda: calls.append(1))
    setup("cpu", threads=1)  # e.g. the server: its memory must go back after a burst
    assert calls == []
    setup("cpu", threads=1, tune_allocator=True)
    assert calls == [1]


def test_batches_are_channels_last_on_the_runtime_device():
    runtime = Runtime(torch.device("cpu"))
    x = runtime.to_batch(torch.rand(4, 1, 28, 28).expand(4, 3, 28, 28))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_only_device_py_asks_the_hardware():
    """Nothing but device.py queries CUDA: every other module takes a Runtime."""
    from pathlib import Path

    import mnist_cnn
    package = Path(mnist_cnn.__file__).parent
    offenders = [p.name for p in package.rglob("*.py")
                 if p.name != "device.py" and "torch.cuda" in p.read_text()]
    assert offenders == []
    assert "runtime" in inspect.signature(training.train).parameters


def test_autocast_is_on_only_for_bf16():
    model = torch.nn.Linear(4, 2)
    x = torch.rand(3, 4)
    with Runtime(torch.device("cpu"), "bf16").autocast():
        assert model(x).dtype == torch.bfloat16
    with Runtime(torch.device("cpu"), "fp32").autocast():
        assert model(x).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on CI)")
def test_the_same_steps_on_gpu_match_the_cpu(tiny_dataset):
    recipe = recipe_for("fast").replace(epochs=0.5, batch_size=50, precision="fp32")
    results = []
    for name in ("cpu", "cuda"):
        runtime = setup(name, "fp32", threads=1)
        model = build_model(recipe)
        training.train(model, tiny_dataset, recipe, runtime, progress=False, log=lambda s: None)
        results.append(torch.cat([p.detach().cpu().flatten() for p in model.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-3)
