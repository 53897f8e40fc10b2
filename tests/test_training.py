"""The training loop on a tiny synthetic dataset: reproducibility, files, resuming, schedules."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
from itertools import pairwise

import pytest
import torch

from mnist_cnn.errors import MnistCnnError
from mnist_cnn.models.checkpoint import load_checkpoint, read_checkpoint
from mnist_cnn.models.registry import build_model, recipe_for
from mnist_cnn.training.loop import lr_factor, train
from mnist_cnn.training.optim import SGD, Adam, AdamW

TIMING = {"train_seconds", "images_per_second"}


def quiet(_line: str) -> None:
    pass


def numbers(history):
    """A history without its timings, which differ from run to run."""
    return [{k: v for k, v in record.items() if k not in TIMING} for record in history]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def run(recipe, data, runtime, out=None, resume=False, log=quiet):
    model = build_model(recipe)
    return train(model, data, recipe, runtime, out, resume=resume, progress=False, log=log)


def count_training_steps(model: torch.nn.Module) -> list[int]:
    calls = []
    model.register_forward_pre_hook(lambda m, _inp: calls.append(1) if m.training else None)
    return calls


SIMPLE = recipe_for("simple").replace(epochs=1, batch_size=100)  # 6 steps per epoch
DEEP = recipe_for("deep").replace(epochs=2, batch_size=100)  # with dropout: RNG state matters


@pytest.fixture(scope="module")
def one_epoch_run(tiny_dataset, runtime, tmp_path_factory):
    out = tmp_path_factory.mktemp("one-epoch")
    return out, run(SIMPLE, tiny_dataset, runtime, out)


def test_same_seed_gives_identical_runs(tiny_dataset, runtime, one_epoch_run):
    _, first = one_epoch_run
    second = run(SIMPLE, tiny_dataset, runtime)
    assert numbers(second.history) == numbers(first.history)
    assert same_weights(second.model, first.model)
    assert not same_weights(second.model, build_model(SIMPLE))  # it did train


def test_different_seeds_give_different_runs(tiny_dataset, runtime, one_epoch_run):
    _, first = one_epoch_run
    other = run(SIMPLE.replace(seed=1), tiny_dataset, runtime)
    assert other.history[0]["cost"] != first.history[0]["cost"]
    assert not same_weights(other.model, first.model)


def test_history_records_each_epoch(one_epoch_run):
    _, result = one_epoch_run
    (record,) = result.history
    assert record["epoch"] == 1
    assert 0 < record["cost"] < 10
    assert 0 <= record["val_accuracy"] <= 1
    assert record["lr"] == pytest.approx(SIMPLE.lr)
    assert record["images_per_second"] > 0


def test_training_learns_the_synthetic_digits(tiny_dataset, runtime):
    result = run(SIMPLE.replace(epochs=3), tiny_dataset, runtime)
    costs = [r["cost"] for r in result.history]
    assert costs[-1] < costs[0]
    assert result.history[-1]["val_accuracy"] > 0.5  # chance is 0.1


def test_checkpoint_and_metrics_are_written_after_every_epoch(tiny_dataset, runtime, tmp_path):
    seen = []

    def log(line: str) -> None:
        if line.startswith("Epoch: "):  # logged before the epoch's files are written
            metrics = tmp_path / "metrics.jsonl"
            seen.append(len(metrics.read_text().splitlines()) if metrics.exists() else 0)

    result = run(SIMPLE.replace(epochs=3), tiny_dataset, runtime, tmp_path, log=log)
    assert seen == [0, 1, 2]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert lines == result.history
    assert result.checkpoint == tmp_path / "last.safetensors"
    model, meta = load_checkpoint(result.checkpoint, expect_model="simple")
    assert meta.epoch == 3
    assert meta.history == result.history
    assert meta.dataset == "mnist"
    assert same_weights(model, result.model)
    tensors, _ = read_checkpoint(result.checkpoint)
    assert "rng.torch" in tensors and any(k.startswith("optim.") for k in tensors)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors", "metrics.jsonl"]


def test_resumed_run_equals_an_uninterrupted_one(tiny_dataset, runtime, tmp_path):
    straight = run(DEEP, tiny_dataset, runtime, tmp_path / "straight")
    first_half = run(DEEP.replace(epochs=1), tiny_dataset, runtime, tmp_path / "resumed")
    assert len(first_half.history) == 1
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    resumed = run(DEEP, tiny_dataset, runtime, tmp_path / "resumed", resume=True)
    assert numbers(resumed.history) == numbers(straight.history)
    assert same_weights(resumed.model, straight.model)
    assert not same_weights(first_half.model, straight.model)
    saved = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in saved] == [1, 2]


def test_resuming_a_fractional_run_does_not_skip_steps(tiny_dataset, runtime, tmp_path):
    """Training 1.5 epochs and then resuming up to 2 must not lose the unfinished half epoch."""
    recipe = SIMPLE.replace(epochs=2)
    partial = run(recipe.replace(epochs=1.5), tiny_dataset, runtime, tmp_path)
    assert [r["epoch"] for r in partial.history] == [1, 2]  # epoch 2 is only half done
    model = build_model(recipe)
    calls = count_training_steps(model)
    try:
        train(model, tiny_dataset, recipe, runtime, tmp_path, resume=True, progress=False,
              log=quiet)
    except MnistCnnError:
        return  # refusing to resume is acceptable; silently stopping short is not
    assert len(calls) == 3  # the second half of epoch 2


def test_resume_with_a_changed_recipe_is_refused(tiny_dataset, runtime, one_epoch_run, tmp_path):
    out, _ = one_epoch_run
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    with pytest.raises(MnistCnnError, match=r"cannot resume: the recipe differs in lr") as e:
        run(SIMPLE.replace(epochs=2, lr=0.01), tiny_dataset, runtime, tmp_path, resume=True)
    assert "0.001 -> 0.01" in str(e.value)


def test_resume_on_other_data_is_refused(tiny_dataset, runtime, one_epoch_run, tmp_path):
    out, _ = one_epoch_run
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    other = dataclasses.replace(tiny_dataset, checksums={"x": "y"})
    with pytest.raises(MnistCnnError, match="cannot resume: trained on 'mnist'"):
        run(SIMPLE.replace(epochs=2), other, runtime, tmp_path, resume=True)


def test_resume_may_train_longer(tiny_dataset, runtime, one_epoch_run, tmp_path):
    out, _ = one_epoch_run
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    lines = []
    result = run(SIMPLE.replace(epochs=2), tiny_dataset, runtime, tmp_path, resume=True,
                 log=lines.append)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert any(line.startswith("resuming") and "after epoch 1" in line for line in lines)
    assert sum(line.startswith("Epoch: ") for line in lines) == 1


def test_resume_without_a_checkpoint_is_an_error(tiny_dataset, runtime, tmp_path):
    with pytest.raises(MnistCnnError, match="no last.safetensors"):
        run(SIMPLE, tiny_dataset, runtime, tmp_path, resume=True)
    with pytest.raises(MnistCnnError, match="no last.safetensors"):
        run(SIMPLE, tiny_dataset, runtime, None, resume=True)


@pytest.mark.parametrize(("epochs", "steps", "records"), [(0.5, 3, 1), (1.5, 9, 2), (0.02, 1, 1)])
def test_fractional_epochs_run_the_right_number_of_steps(tiny_dataset, runtime, epochs, steps,
                                                         records):
    recipe = SIMPLE.replace(epochs=epochs)
    model = build_model(recipe)
    calls = count_training_steps(model)
    result = train(model, tiny_dataset, recipe, runtime, progress=False, log=quiet)
    assert len(calls) == steps
    assert [r["epoch"] for r in result.history] == list(range(1, records + 1))


def test_batch_larger_than_the_training_set_is_an_error(tiny_dataset, runtime):
    with pytest.raises(MnistCnnError, match="batch size 601 exceeds the 600 training images"):
        run(SIMPLE.replace(batch_size=601), tiny_dataset, runtime)


def test_invalid_recipe_is_refused_before_training(tiny_dataset, runtime):
    with pytest.raises(MnistCnnError, match="dropout must be in"):
        run(SIMPLE.replace(dropout=1.0), tiny_dataset, runtime)
    with pytest.raises(MnistCnnError, match="unknown schedule 'linear'"):
        run(SIMPLE.replace(schedule="linear"), tiny_dataset, runtime)


def test_the_schedule_sets_the_optimizers_learning_rate(tiny_dataset, runtime):
    recipe = SIMPLE.replace(schedule="cosine", lr=0.002)
    result = run(recipe, tiny_dataset, runtime)
    assert result.history[-1]["lr"] == pytest.approx(0.002 * lr_factor(recipe, 5, 6))


# --------------------------------------------------------------------------------------------
# learning-rate schedules


def factors(schedule: str, total: int = 100, **changes) -> list[float]:
    recipe = SIMPLE.replace(schedule=schedule, **changes)
    return [lr_factor(recipe, step, total) for step in range(total)]


def test_constant_schedule():
    assert factors("constant") == [1.0] * 100


def test_cosine_schedule():
    f = factors("cosine")
    assert f[0] == pytest.approx(1.0)
    assert f[50] == pytest.approx(0.5)
    assert f[99] == pytest.approx(0.0, abs=1e-3)
    assert all(a > b for a, b in pairwise(f))


def test_onecycle_schedule():
    f = factors("onecycle", warmup=0.25)
    assert f[0] == pytest.approx(0.04)  # lr / 25
    assert f[25] == pytest.approx(1.0)
    assert max(f) == f[25]
    assert all(a < b for a, b in pairwise(f[:26]))
    assert all(a > b for a, b in pairwise(f[25:]))
    assert f[99] == pytest.approx(1 / 75, rel=1e-6)
    assert min(f) >= 1e-3
    assert lr_factor(SIMPLE.replace(schedule="onecycle"), 100, 100) == pytest.approx(1e-3)


@pytest.mark.parametrize("ours, theirs", [
    (lambda p: Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.01),
     lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.01,
                                fused=True)),
    (lambda p: AdamW(p, lr=0.01, weight_decay=0.05),
     lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05, fused=True)),
    (lambda p: SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
])
def test_the_optimizers_step_and_save_as_torch_optims_do(ours, theirs):
    # the same steps on the same weights as torch.optim's (changing lr between steps, as the
    # loop does, and a parameter without a gradient), and the same state_dict
    torch.manual_seed(0)
    weights = [torch.randn(4, 3), torch.randn(3), torch.randn(2)]
    mine, reference = [w.clone() for w in weights], [w.clone() for w in weights]
    a, b = ours(mine), theirs(reference)
    for _ in range(6):
        for group in a.param_groups + b.param_groups:
            group["lr"] *= 0.8
        grads = [torch.randn_like(w) for w in weights[:2]]  # the last one is frozen
        for params, opt in ((mine, a), (reference, b)):
            opt.zero_grad(set_to_none=True)
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for m, r in zip(mine, reference):
        torch.testing.assert_close(m, r)
    ours_state, their_state = a.state_dict(), b.state_dict()
    assert ours_state["param_groups"][0]["params"] == their_state["param_groups"][0]["params"]
    assert ours_state["state"].keys() == their_state["state"].keys() == {0, 1}
    for index, state in their_state["state"].items():
        assert ours_state["state"][index].keys() == state.keys()
        for key, value in state.items():
            torch.testing.assert_close(ours_state["state"][index][key], value)


def test_an_optimizer_resumes_from_its_state_dict():
    torch.manual_seed(0)
    first, second = [torch.randn(5)], [torch.randn(5)]
    second[0].copy_(first[0])
    a, b = Adam(first, lr=0.1), Adam(second, lr=0.1)
    for opt, params in ((a, first), (b, second)):
        params[0].grad = torch.ones(5)
        opt.step()
    b.load_state_dict(a.state_dict())
    for opt, params in ((a, first), (b, second)):
        params[0].grad = torch.full((5,), -2.0)
        opt.step()
    torch.testing.assert_close(first[0], second[0])
    assert float(b.state_dict()["state"][0]["step"]) == 2


# --------------------------------------------------------------------------------------------
# the run folder: checked, claimed and locked before the first step


def test_an_unusable_out_fails_before_the_first_step(tiny_dataset, runtime, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    # tests run as root, where permissions stop nothing: a file in the path stops everyone
    for out, message in ((a_file, "not a folder"), (a_file / "run", "cannot create")):
        model = build_model(SIMPLE)
        steps = count_training_steps(model)
        with pytest.raises(MnistCnnError, match=message):
            train(model, tiny_dataset, SIMPLE, runtime, out, progress=False, log=quiet)
        assert steps == []


def test_a_full_disk_fails_before_the_first_step(tiny_dataset, runtime, tmp_path, monkeypatch):
    import mnist_cnn.files

    monkeypatch.setattr(mnist_cnn.files.shutil, "disk_usage",
                        lambda _path: shutil._ntuple_diskusage(10**12, 10**12 - 4096, 4096))
    model = build_model(SIMPLE)
    steps = count_training_steps(model)
    with pytest.raises(MnistCnnError, match=r"only 0\.0 MiB free, the run needs about"):
        train(model, tiny_dataset, SIMPLE, runtime, tmp_path, progress=False, log=quiet)
    assert steps == []


def test_another_runs_checkpoint_is_kept_unless_overwrite(tiny_dataset, runtime, one_epoch_run,
                                                           tmp_path):
    out, _ = one_epoch_run
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    before = (tmp_path / "last.safetensors").read_bytes()
    model = build_model(SIMPLE)
    steps = count_training_steps(model)
    with pytest.raises(MnistCnnError, match="already holds a run .*--resume.*--overwrite"):
        train(model, tiny_dataset, SIMPLE, runtime, tmp_path, progress=False, log=quiet)
    assert steps == [] and (tmp_path / "last.safetensors").read_bytes() == before
    other = SIMPLE.replace(seed=5)
    result = train(build_model(other), tiny_dataset, other, runtime, tmp_path, progress=False,
                   log=quiet, overwrite=True)
    assert result.checkpoint == tmp_path / "last.safetensors"
    assert load_checkpoint(result.checkpoint)[1].recipe.seed == 5


def test_a_folder_in_use_is_refused(tiny_dataset, runtime, tmp_path):
    from mnist_cnn.files import locked_folder

    with locked_folder(tmp_path):  # another run, as far as the kernel's flock is concerned
        model = build_model(SIMPLE)
        steps = count_training_steps(model)
        with pytest.raises(MnistCnnError, match=f"^{tmp_path} is in use by another run"):
            train(model, tiny_dataset, SIMPLE, runtime, tmp_path, progress=False, log=quiet)
        assert steps == []
    run(SIMPLE.replace(epochs=0.2), tiny_dataset, runtime, tmp_path)  # released: usable again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors", "metrics.jsonl"]


def test_a_killed_runs_lock_does_not_block_the_folder(tiny_dataset, runtime, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)",
         str(tmp_path / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(MnistCnnError, match="in use by another run"):
            run(SIMPLE, tiny_dataset, runtime, tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()
    assert (tmp_path / ".lock").exists()  # a kill leaves the file, but not the lock
    assert run(SIMPLE.replace(epochs=0.2), tiny_dataset, runtime, tmp_path).checkpoint is not None


def test_stale_temporary_files_are_removed(tiny_dataset, runtime, tmp_path):
    stale = [tmp_path / ".last.safetensors.k2j4x9.tmp", tmp_path / ".probe.abc.tmp"]
    for path in stale:
        path.write_bytes(b"left by a kill -9")
    kept = tmp_path / "notes.tmp"  # not a name atomic writes use
    kept.write_text("mine")
    run(SIMPLE.replace(epochs=0.2), tiny_dataset, runtime, tmp_path)
    assert not any(p.exists() for p in stale)
    assert kept.read_text() == "mine"


def test_training_leaves_the_callers_random_state_alone(tiny_dataset, runtime):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    run(DEEP.replace(epochs=0.5), tiny_dataset, runtime)  # dropout draws from the global RNG
    assert torch.equal(torch.rand(3), expected)


def test_without_validation_images_training_runs_and_records_no_validation(runtime, tmp_path):
    from conftest import synthetic_arrays

    from mnist_cnn.data.dataset import make_dataset
    from mnist_cnn.data.sources import DATASETS
    from mnist_cnn.training.loop import format_epoch

    data = make_dataset(synthetic_arrays(), DATASETS["mnist"], "synthetic", val_size=0)
    assert len(data.val) == 0 and len(data.train) == 700
    lines = []
    result = run(SIMPLE, data, runtime, tmp_path, log=lines.append)
    record = result.history[-1]
    assert "val_accuracy" not in record and record["step"] == 7
    assert "no validation" in format_epoch(record)
    _, meta = read_checkpoint(result.checkpoint)
    assert meta.train_size == 700
    # resuming on a split that holds images out would train on other images: refused
    held_out = make_dataset(synthetic_arrays(), DATASETS["mnist"], "synthetic", val_size=100)
    with pytest.raises(MnistCnnError, match="trained on 700 images, not on 600"):
        run(SIMPLE.replace(epochs=2), held_out, runtime, tmp_path, resume=True)


@pytest.mark.parametrize("val_size", [-1, 700, 10_000])
def test_holding_out_impossible_numbers_of_images_is_refused(val_size):
    from conftest import synthetic_arrays

    from mnist_cnn.data.dataset import make_dataset
    from mnist_cnn.data.sources import DATASETS

    with pytest.raises(MnistCnnError, match="cannot hold out"):
        make_dataset(synthetic_arrays(), DATASETS["mnist"], "synthetic", val_size=val_size)


# --------------------------------------------------------------------------------------------
# A run that diverges stops with one line, and leaves the last good checkpoint as it was


def overflow_from(monkeypatch, first_step: int) -> None:
    """From `first_step` on, a learning rate of 1e30: the weights overflow, the loss is NaN."""
    import mnist_cnn.training.loop

    real = mnist_cnn.training.loop.lr_factor
    monkeypatch.setattr(mnist_cnn.training.loop, "lr_factor",
                        lambda recipe, step, total: 1e30 if step >= first_step else
                        real(recipe, step, total))


def test_a_diverging_run_stops_at_once_and_writes_nothing(tiny_dataset, runtime, tmp_path,
                                                         monkeypatch):
    overflow_from(monkeypatch, 0)
    recipe = SIMPLE.replace(epochs=3)  # 18 steps
    model = build_model(recipe)
    steps = count_training_steps(model)
    with pytest.raises(MnistCnnError) as e:
        train(model, tiny_dataset, recipe, runtime, tmp_path, progress=False, log=quiet)
    assert str(e.value).startswith("training diverged in epoch 1: the loss is nan by step ")
    assert str(e.value).endswith("; lower the learning rate (--lr, now 0.001); no checkpoint "
                                 "was written")
    assert len(steps) <= 3
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_run_diverging_later_keeps_its_last_good_checkpoint(tiny_dataset, runtime, tmp_path,
                                                              monkeypatch):
    run(SIMPLE, tiny_dataset, runtime, tmp_path)  # epoch 1: steps 0 to 5
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    overflow_from(monkeypatch, 6)
    with pytest.raises(MnistCnnError, match=r"in epoch 2: .* is left as it was \(epoch 1\)$"):
        run(SIMPLE.replace(epochs=3), tiny_dataset, runtime, tmp_path, resume=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    load_checkpoint(tmp_path / "last.safetensors")  # still loads


def test_weights_beyond_the_readers_bounds_are_never_written(tiny_dataset, runtime, tmp_path):
    """SGD at lr 1e6 keeps the loss finite on this data, but not the weights: the checkpoint
    that the readers would refuse is not written."""
    recipe = SIMPLE.replace(optimizer="sgd", lr=1e6)
    with pytest.raises(MnistCnnError, match="training diverged in epoch 1: tensor model.* far "
                       "beyond what training reaches .*no checkpoint was written"):
        run(recipe, tiny_dataset, runtime, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_huge_weight_decay_is_named_as_a_cause(tiny_dataset, runtime, tmp_path):
    with pytest.raises(MnistCnnError, match=r"lower the learning rate \(--lr, now 0.001\) or the "
                       r"weight decay \(--weight-decay, now 1e\+300\); no checkpoint"):
        run(SIMPLE.replace(weight_decay=1e300), tiny_dataset, runtime, tmp_path)


def test_save_checkpoint_refuses_what_the_readers_would(tmp_path):
    from mnist_cnn.models.checkpoint import save_checkpoint

    model = build_model("simple")
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(MnistCnnError, match="not written, since it could not be read back: "
                       "tensor model.0.weight holds NaN"):
        save_checkpoint(tmp_path / "c.safetensors", model, {"recipe": SIMPLE.to_dict()})
    assert list(tmp_path.iterdir()) == []


def test_resuming_with_nothing_left_to_do_rebuilds_a_lost_log(tiny_dataset, runtime, tmp_path):
    """A kill between the checkpoint's rename and the log's write leaves the log behind."""
    run(SIMPLE, tiny_dataset, runtime, tmp_path)
    (tmp_path / "metrics.jsonl").unlink()
    result = run(SIMPLE, tiny_dataset, runtime, tmp_path, resume=True)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == result.history
    assert [r["epoch"] for r in result.history] == [1]
