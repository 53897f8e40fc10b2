"""What goes wrong around a command rather than inside it: a full disk, an unwritable file,
Ctrl-C. Each ends in one line and an exit status that tells, never a traceback.

The disk fills through a file-size limit (RLIMIT_FSIZE, as `ulimit -f` sets it): past it a write
fails with EFBIG, "File too large", as it would with ENOSPC on a full disk (Python ignores the
SIGXFSZ signal that would otherwise end the process). Commands run as processes here, on the tiny
synthetic dataset (tests/distributed_worker.py), so that neither the limit nor a signal reaches
pytest itself.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_main
from distributed_worker import tiny_dataset

import mnist_cnn.data.dataset

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "distributed_worker.py"
TRAIN = ["train", "--model", "simple", "--batch-size", "100", "--threads", "1", "--no-progress"]


def env() -> dict[str, str]:
    paths = [str(TESTS.parent / "src"), str(TESTS)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1"}


def file_size_limit(size: int):
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return limit


def command(args: list[str], size_limit: int | None = None) -> subprocess.CompletedProcess:
    """`mnist-cnn ARGS` on the tiny dataset in a process of its own, files capped in size."""
    return subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True,
                          env=env(), timeout=180,
                          preexec_fn=file_size_limit(size_limit) if size_limit else None)


def assert_one_line_error(done: subprocess.CompletedProcess, message: str) -> None:
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == f"mnist-cnn: error: {message}"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One epoch of `simple` on the tiny dataset: a run folder with its checkpoint."""
    out = tmp_path_factory.mktemp("run")
    done = command([*TRAIN, "--epochs", "1", "--out", str(out)])
    assert done.returncode == 0, done.stderr
    return out


# --------------------------------------------------------------------------------------------
# a full disk, a file that cannot be written or read


def test_a_full_disk_during_training_is_one_line(tmp_path):
    """The folder check passes (the probe is small); the first checkpoint (600 KB) does not fit."""
    out = tmp_path / "run"
    done = command([*TRAIN, "--epochs", "2", "--out", str(out)], size_limit=200_000)
    assert_one_line_error(done, f"{out}/last.safetensors: cannot write it (File too large)")
    assert not (out / "last.safetensors").exists() and leftovers(out) == []


def test_a_full_disk_keeps_the_last_checkpoint_and_resume_recovers(run_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("last.safetensors", "metrics.jsonl"):
        (out / name).write_bytes((run_dir / name).read_bytes())
    before = (out / "last.safetensors").read_bytes()
    done = command([*TRAIN, "--epochs", "2", "--out", str(out), "--resume"], size_limit=200_000)
    assert_one_line_error(done, f"{out}/last.safetensors: cannot write it (File too large)")
    assert (out / "last.safetensors").read_bytes() == before and leftovers(out) == []
    done = command([*TRAIN, "--epochs", "2", "--out", str(out), "--resume"])
    assert done.returncode == 0, done.stderr
    assert "Epoch: 0002" in done.stdout


def test_an_export_to_a_full_disk_is_one_line(run_dir, tmp_path):
    onnx = tmp_path / "model.onnx"
    done = command(["export", str(run_dir / "last.safetensors"), "--onnx", str(onnx),
                    "--no-check", "--threads", "1"], size_limit=100_000)
    assert_one_line_error(done, f"{onnx}: cannot write it (File too large)")
    assert list(tmp_path.iterdir()) == []


def test_plots_on_a_full_disk_are_one_line(run_dir, tmp_path):
    plots = tmp_path / "plots"
    done = command(["plot", str(run_dir / "last.safetensors"), "--out", str(plots),
                    "--threads", "1"], size_limit=5_000)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.splitlines()[-1]
    assert last.startswith(f"mnist-cnn: error: {plots}/") and last.endswith(
        ".png: cannot write it (File too large)")
    assert leftovers(plots) == []


def test_plots_into_a_file_are_one_line(run_dir, tmp_path):
    not_a_folder = tmp_path / "plots"
    not_a_folder.write_text("a file")
    code, out, err = run_main(["plot", str(run_dir / "last.safetensors"), "--out",
                               str(not_a_folder), "--threads", "1"])
    assert code == 1 and out == ""
    assert err == (f"mnist-cnn: error: {not_a_folder}: the folder of the plots is not a folder "
                   "(a file has that name, or is in its path)\n")


def test_test_metrics_that_cannot_be_written_are_one_line(tmp_path, monkeypatch):
    """test_metrics.json was written in place: a failure left it empty, in a traceback."""
    monkeypatch.setattr(mnist_cnn.data.dataset, "load_dataset", tiny_dataset)
    out = tmp_path / "run"
    (out / "test_metrics.json").mkdir(parents=True)  # in its way: a folder of that name
    code, printed, err = run_main([*TRAIN, "--epochs", "1", "--out", str(out)])
    assert code == 1 and "Accuracy: " in printed
    assert err == f"mnist-cnn: error: {out}/test_metrics.json: cannot write it (Is a directory)\n"
    assert (out / "last.safetensors").is_file() and leftovers(out) == []


def locked(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`folder`, made unopenable (mode 000). Root opens it all the same: for root, every stat
    inside it is refused as the kernel refuses it to anyone else."""
    folder.mkdir(exist_ok=True)
    folder.chmod(0)
    if os.geteuid() == 0:
        real_stat = Path.stat

        def stat(self, *args, **kwargs):
            if folder in self.parents:
                raise PermissionError(13, "Permission denied", str(self))
            return real_stat(self, *args, **kwargs)

        monkeypatch.setattr(Path, "stat", stat)
    return folder


@pytest.fixture
def restore_modes(tmp_path):
    yield
    for folder in tmp_path.iterdir():
        folder.chmod(0o755)  # so that pytest can remove it


def test_a_checkpoint_in_a_folder_one_cannot_open_is_one_line(tmp_path, monkeypatch,
                                                              restore_modes):
    checkpoint = locked(tmp_path / "private", monkeypatch) / "last.safetensors"
    for argv in (["evaluate", str(checkpoint)],
                 ["predict", str(checkpoint), str(tmp_path / "digit.png")]):
        code, out, err = run_main([*argv, "--threads", "1"])
        assert (code, out) == (1, "")
        assert err == (f"mnist-cnn: error: {checkpoint}: cannot read the checkpoint (Permission "
                       "denied)\n")


def test_an_unreadable_package_folder_is_one_line(tmp_path, monkeypatch, restore_modes):
    from mnist_cnn.models import checkpoint

    shipped = locked(tmp_path / "pretrained", monkeypatch) / "mnist-best.safetensors"
    monkeypatch.setattr(checkpoint, "SHIPPED", shipped)
    code, out, err = run_main(["predict", str(tmp_path / "digit.png"), "--threads", "1"])
    assert (code, out) == (1, "")
    assert err == (f"mnist-cnn: error: {shipped}: cannot read the model shipped with mnist-cnn "
                   "(Permission denied); reinstall mnist-cnn, or name a checkpoint\n")


# --------------------------------------------------------------------------------------------
# Ctrl-C: one line, exit status 130, and the truth about what was saved


def interrupted(args: list[str], **where: str) -> subprocess.CompletedProcess:
    """The command, sent SIGINT (as Ctrl-C does) at a training step (INTERRUPT_AT) or when a
    function is called (INTERRUPT_IN): see tests/distributed_worker.py."""
    return subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True,
                          env={**env(), **where}, timeout=180)


def assert_interrupted(done: subprocess.CompletedProcess, detail: str = "") -> None:
    assert done.returncode == 130, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"mnist-cnn: interrupted{detail}"]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="watches the imports in /proc")
def test_ctrl_c_while_the_command_starts(tmp_path):
    """During the imports (torch's shared library is loaded, its Python modules not yet); `env`
    needs torch (`models` and `--help` no longer import it)."""
    process = subprocess.Popen([sys.executable, "-m", "mnist_cnn", "env"], env=env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while "libtorch" not in Path(f"/proc/{process.pid}/maps").read_text():
            assert process.poll() is None
    except FileNotFoundError:  # it ended already: the imports were faster than this loop
        pytest.fail("the command ended before its imports could be interrupted")
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert (process.returncode, out, err) == (130, "", "mnist-cnn: interrupted\n")


def test_ctrl_c_before_the_first_epoch_ends_says_nothing_was_saved(tmp_path):
    out = tmp_path / "run"
    done = interrupted([*TRAIN, "--epochs", "3", "--out", str(out)], INTERRUPT_AT="3")
    assert_interrupted(done, ": before the first epoch ended; nothing was saved")
    assert list(out.iterdir()) == []  # no checkpoint, no lock, no temporary file


def test_ctrl_c_in_a_later_epoch_names_the_checkpoint_and_how_to_continue(tmp_path):
    out = tmp_path / "run"
    done = interrupted([*TRAIN, "--epochs", "3", "--out", str(out)], INTERRUPT_AT="8")
    assert_interrupted(done, f": {out}/last.safetensors holds epoch 1; the same command with "
                       "--resume continues from there")
    done = interrupted([*TRAIN, "--epochs", "3", "--out", str(out), "--resume"],
                       INTERRUPT_AT="14")
    assert_interrupted(done, f": {out}/last.safetensors holds epoch 2; the same command "
                       "continues from there")
    done = command([*TRAIN, "--epochs", "3", "--out", str(out), "--resume"])
    assert done.returncode == 0 and "after epoch 2" in done.stdout, done.stderr
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_ctrl_c_while_a_checkpoint_is_written_waits_for_it_and_its_log(tmp_path):
    """Sent between the checkpoint's write and its log's: both are written, then it stops."""
    out = tmp_path / "run"
    done = interrupted([*TRAIN, "--epochs", "3", "--out", str(out)],
                       INTERRUPT_IN="mnist_cnn.training.loop.write_metrics")
    assert_interrupted(done, f": {out}/last.safetensors holds epoch 1; the same command with "
                       "--resume continues from there")
    assert [json.loads(line)["epoch"] for line in
            (out / "metrics.jsonl").read_text().splitlines()] == [1]


def test_ctrl_c_while_overwriting_leaves_the_earlier_run(run_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    before = (out / "last.safetensors").read_bytes()
    done = interrupted([*TRAIN, "--epochs", "2", "--out", str(out), "--overwrite"],
                       INTERRUPT_AT="2")
    assert_interrupted(done, f": before the first epoch ended; nothing was saved; the run {out} "
                       "held before is as it was")
    assert (out / "last.safetensors").read_bytes() == before
    done = interrupted([*TRAIN, "--epochs", "2", "--out", str(out), "--overwrite"],
                       INTERRUPT_AT="8")
    assert_interrupted(done, f": {out}/last.safetensors holds epoch 1; the same command with "
                       "--resume instead of --overwrite continues from there")


@pytest.mark.parametrize(("where", "detail"), [
    ("mnist_cnn.data.dataset.load_dataset", ": before training started; nothing was saved"),
    ("mnist_cnn.training.loop.resume_from", ": {out}/last.safetensors is as it was"),
    ("mnist_cnn.inference.evaluation.evaluate",
     ": training had finished ({out}/last.safetensors holds epoch 1); its test accuracy was not measured"),
])
def test_ctrl_c_around_the_training_loop(run_dir, tmp_path, where, detail):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    done = interrupted([*TRAIN, "--epochs", "1", "--out", str(out), "--resume"],
                       INTERRUPT_IN=where)
    assert_interrupted(done, detail.format(out=out))


def test_ctrl_c_in_an_ensemble_member(tmp_path):
    out = tmp_path / "ensemble"
    args = ["ensemble", "train", "--model", "simple", "--members", "2", "--batch-size", "100",
            "--epochs", "2", "--threads", "1", "--no-progress", "--out", str(out)]
    done = interrupted(args, INTERRUPT_AT="8")
    assert_interrupted(done, f": {out}/member-0/last.safetensors holds epoch 1; the same command "
                       "continues from there, keeping the members that finished")


@pytest.mark.parametrize(("args", "where"), [
    (["evaluate", "{checkpoint}"], "mnist_cnn.inference.evaluation.evaluate"),
    (["predict", "{checkpoint}", "{digit}"], "mnist_cnn.inference.predict.predict_images"),
    (["export", "{checkpoint}", "--onnx", "{tmp}/m.onnx", "--no-check"],
     "mnist_cnn.inference.export.export_checkpoint"),
    (["plot", "{checkpoint}", "--out", "{tmp}/plots"], "mnist_cnn.inference.plots.write_report"),
    (["data", "info"], "mnist_cnn.data.dataset.load_dataset"),
])
def test_ctrl_c_in_any_command_is_one_line(run_dir, tmp_path, args, where):
    from PIL import Image

    Image.new("L", (28, 28), 255).save(tmp_path / "digit.png")
    names = {"checkpoint": run_dir / "last.safetensors", "digit": tmp_path / "digit.png",
             "tmp": tmp_path}
    done = interrupted([a.format(**names) for a in args] + (["--threads", "1"] if
                       args[0] != "data" else []), INTERRUPT_IN=where)
    assert_interrupted(done)
    assert not (tmp_path / "m.onnx").exists()


def test_ctrl_c_stops_the_server_in_one_line(run_dir):
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mnist_cnn", "serve",
                               str(run_dir / "last.safetensors"), "--port", str(port),
                               "--threads", "1"], env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).read()
            break
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.2)
    server.send_signal(signal.SIGINT)
    out, err = server.communicate(timeout=60)
    assert server.returncode == 130
    assert "(Ctrl-C stops)" in out
    assert err == "mnist-cnn: interrupted: the server stopped\n"
