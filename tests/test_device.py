"""Device handling lives in one small place; CPU and GPU runs go through the same code."""

import inspect
import subprocess
import sys

import pytest
import torch

from mnist_cnn.errors import MnistCnnError
from mnist_cnn.models.registry import build_model, recipe_for
from mnist_cnn.runtime import device, environment, threads
from mnist_cnn.runtime.device import Runtime, choose_device, setup
from mnist_cnn.training import loop as training


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


# --------------------------------------------------------------------------------------------
# Threads that follow the machine's load


class FakeMachine:
    """A clock, the machine's busy CPU-seconds and this process's CPU-seconds, set by the test."""

    def __init__(self):
        self.now, self.busy, self.own = 0.0, 0.0, 0.0

    def advance(self, seconds: float, others: float, own: float) -> None:
        """`seconds` pass while other processes use `others` cores and this one `own` cores."""
        self.now += seconds
        self.busy += (others + own) * seconds
        self.own += own * seconds

    def tuner(self, cores: int) -> device.ThreadTuner:
        return device.ThreadTuner(cores, interval=0.5, read_busy=lambda: self.busy,
                                  clock=lambda: self.now, own_cpu=lambda: self.own)


def test_threads_give_way_to_a_busy_process_and_come_back():
    machine = FakeMachine()
    tuner = machine.tuner(cores=2)
    try:
        assert tuner.threads == 2 and torch.get_num_threads() == 2
        machine.advance(0.6, others=0.05, own=2.0)  # idle machine: keep every core
        assert tuner.poll() == 2
        machine.advance(0.6, others=0.7, own=1.3)  # a busy process shares the cores with us
        assert tuner.poll() == 1 and torch.get_num_threads() == 1
        machine.advance(0.6, others=1.0, own=1.0)  # it keeps its core
        assert tuner.poll() == 1
        machine.advance(0.6, others=0.4, own=1.0)  # between the thresholds: no flapping
        assert tuner.poll() == 1
        machine.advance(0.6, others=0.1, own=1.0)  # it stopped
        assert tuner.poll() == 2 and torch.get_num_threads() == 2
        assert tuner.reset_used() == [1, 2] and tuner.reset_used() == []
        tuner.poll()
        assert tuner.reset_used() == [2]  # the counts that ran since the last reset
    finally:
        torch.set_num_threads(device.cpu_count())


def test_threads_are_checked_only_once_per_interval_and_never_drop_below_one():
    machine = FakeMachine()
    tuner = machine.tuner(cores=4)
    try:
        machine.advance(0.05, others=3.0, own=1.0)
        assert tuner.poll() == 4  # too soon to judge
        machine.advance(0.1, others=3.0, own=1.0)
        assert tuner.poll() == 1  # the first check comes after a tenth of a second
        machine.advance(0.6, others=0.0, own=4.0)
        machine.advance(0.2, others=0.0, own=4.0)
        assert tuner.poll() == 4
        machine.advance(0.3, others=3.0, own=1.0)
        assert tuner.poll() == 4  # then once per interval (0.5 s) only
        machine.advance(0.6, others=9.0, own=0.5)  # more load than cores: still one thread
        assert tuner.poll() == 1
        machine.advance(0.6, others=1.0, own=3.0)
        assert tuner.poll() == 3
    finally:
        torch.set_num_threads(device.cpu_count())


def test_without_proc_stat_the_count_stays():
    machine = FakeMachine()
    tuner = device.ThreadTuner(2, read_busy=lambda: None, clock=lambda: machine.now)
    try:
        machine.advance(5.0, others=2.0, own=0.0)
        assert tuner.poll() == 2
    finally:
        torch.set_num_threads(device.cpu_count())


@pytest.mark.skipif(device.cpu_count() < 2 or threads.read_cpu_busy() is None,
                    reason="needs 2 cores and Linux's /proc/stat")
def test_a_real_busy_process_makes_training_use_fewer_threads(tiny_dataset):
    """No timing is asserted: only that the load was seen and the thread count followed it."""
    import subprocess
    import sys
    import time

    runtime = setup("cpu", "fp32")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        recipe = recipe_for("simple").replace(epochs=1, batch_size=50)
        runtime.tuner.interval = 0.2
        result = training.train(build_model(recipe), tiny_dataset, recipe, runtime,
                                progress=False, log=lambda s: None)
        assert runtime.tuner.others > 0.5
        assert 1 in result.history[-1]["threads"]
    finally:
        hog.kill()
        hog.wait()
        torch.set_num_threads(device.cpu_count())


def test_fixed_threads_turn_the_tuner_off():
    runtime = setup("cpu", "fp32", threads=1)
    try:
        assert runtime.tuner is None and torch.get_num_threads() == 1
        runtime.poll_threads()  # nothing to do, nothing breaks
    finally:
        torch.set_num_threads(device.cpu_count())


def test_environment_names_what_decides_the_figures():
    env = environment.describe_environment()
    assert env["torch"] == torch.__version__
    assert env["cores available"] == device.cpu_count()
    assert env["ATen CPU capability"] == torch.backends.cpu.get_cpu_capability()
    text = environment.format_environment(env)
    for key in ("cpu:", "cpu features:", "oneDNN:", "CUDA devices:"):
        assert key in text


def test_importing_the_library_changes_nothing_process_wide():
    """Threads, the RNG, running threads and the environment are the caller's: only setup()
    (which the command line calls) tunes the process."""
    code = """
import os, threading, torch
before = (torch.get_num_threads(), torch.random.get_rng_state(), threading.active_count(),
          dict(os.environ))
import mnist_cnn, mnist_cnn.cli, mnist_cnn.inference.predict, mnist_cnn.server, mnist_cnn.inference.ensemble
from mnist_cnn import build_model
build_model("best")
after = (torch.get_num_threads(), torch.random.get_rng_state(), threading.active_count(),
         dict(os.environ))
assert before[0] == after[0] and torch.equal(before[1], after[1]), "threads or RNG changed"
assert before[2:] == after[2:], "a thread was started or the environment changed"
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
