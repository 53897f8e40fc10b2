"""torchrun and DistributedDataParallel on CPUs: gloo process groups on 127.0.0.1.

Each torchrun launch runs tests/distributed_worker.py (the mnist-cnn command on the tiny synthetic
dataset) with one thread per process, and is bounded by a timeout; the file takes under a minute
on 2 cores. `-m "not distributed"` leaves it out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port
from distributed_worker import tiny_dataset

import mnist_cnn.data.dataset
from mnist_cnn.cli import main
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.models.checkpoint import load_checkpoint
from mnist_cnn.models.registry import build_model, recipe_for
from mnist_cnn.runtime.device import Runtime
from mnist_cnn.training.loop import epoch_permutation, shard, train

pytestmark = pytest.mark.distributed

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "distributed_worker.py"
LAUNCH_TIMEOUT = 120  # seconds for one torchrun launch (they take 5 to 15 s here)
# 2 processes average two half-batch gradients where 1 process takes the whole batch's: the same
# sum in another order, so the weights agree to float32 rounding, grown over a few Adam steps
TOLERANCE = 1e-5
# 6 steps per epoch: 600 tiny training images in global batches of 100
TRAIN = ["train", "--model", "simple", "--batch-size", "100", "--seed", "3", "--threads", "1",
         "--no-progress"]


def torchrun_command(args: list[str], *launch: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launch, str(WORKER), *args]


def worker_env(**extra: str) -> dict[str, str]:
    src = str(TESTS.parent / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(TESTS)]),
            "OMP_NUM_THREADS": "1", "MNIST_CNN_DIST_TIMEOUT": "60",
            "PYTHONUNBUFFERED": "1", **extra}  # unbuffered: a killed worker's lines still show


def launch(args: list[str], nproc: int = 2, *options: str, **env: str
           ) -> subprocess.CompletedProcess:
    """Run the command under torchrun on this machine (it must succeed, without a traceback)."""
    command = torchrun_command(args, "--nproc-per-node", str(nproc), "--rdzv-backend", "c10d",
                               "--rdzv-endpoint", f"127.0.0.1:{free_port()}", *options)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT,
                          env=worker_env(**env))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def torchrun(args: list[str], nproc: int = 2, *options: str, **env: str) -> str:
    """launch(), for its output."""
    return launch(args, nproc, *options, **env).stdout


def in_process(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same command in this process: one process, no torchrun."""
    monkeypatch.setattr(mnist_cnn.data.dataset, "load_dataset", tiny_dataset)
    assert main(args) == 0


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0].state_dict()


def max_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def epochs_logged(out: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def two_processes(runs) -> tuple[Path, str]:
    """2 epochs of `simple` trained by 2 processes: the run folder and the output."""
    out = runs / "two"
    return out, torchrun([*TRAIN, "--epochs", "2", "--out", str(out)])


@pytest.fixture(scope="module")
def one_process(runs) -> dict[int, Path]:
    """The same run in one process, after 2 and after 3 epochs: the checkpoints."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        in_process([*TRAIN, "--epochs", "2", "--out", str(runs / "one")], monkeypatch)
        shutil.copytree(runs / "one", runs / "one-3")
        in_process([*TRAIN, "--epochs", "3", "--out", str(runs / "one-3"), "--resume"],
                   monkeypatch)
    return {2: runs / "one" / "last.safetensors", 3: runs / "one-3" / "last.safetensors"}


# --------------------------------------------------------------------------------------------
# shards of the global batch (no processes needed)


@pytest.mark.parametrize("world", [1, 2, 4, 5])
def test_shards_are_disjoint_and_together_are_the_batch(world):
    batch, n = 20, 100
    perm = epoch_permutation(7, 2, n, torch.device("cpu"))
    seen = []
    for i in range(n // batch):
        parts = [shard(perm, i, batch, rank, world) for rank in range(world)]
        assert all(len(p) == batch // world for p in parts)
        assert torch.equal(torch.cat(parts), perm[i * batch:(i + 1) * batch])
        seen += torch.cat(parts).tolist()
    assert sorted(seen) == list(range(n))  # the epoch covers the training set once


def test_a_global_batch_that_does_not_split_evenly_is_refused(tiny_dataset):
    recipe = recipe_for("simple").replace(batch_size=101, epochs=1)
    two_ranks = Runtime(torch.device("cpu"), rank=1, world_size=2)
    with pytest.raises(MnistCnnError, match="multiple of 2"):
        train(build_model(recipe), tiny_dataset, recipe, two_ranks, progress=False)


# --------------------------------------------------------------------------------------------
# data-parallel training


def test_two_processes_train_as_one_does(two_processes, one_process):
    out, stdout = two_processes
    assert max_difference(out / "last.safetensors", one_process[2]) < TOLERANCE
    untrained = build_model(recipe_for("simple").replace(seed=3)).state_dict()
    trained = weights(out / "last.safetensors")
    assert max(float((trained[k] - untrained[k]).abs().max()) for k in trained) > 1e-3
    # rank 0 alone speaks and writes
    assert stdout.count("2 processes: global batch 100, 50 per process") == 1
    assert stdout.count("Epoch: 0002") == 1 and stdout.count("Accuracy:") == 1
    assert epochs_logged(out) == [1, 2]
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["world_size"] == 2 and record["step"] == 12


def test_a_killed_worker_restarts_and_resumes_to_the_same_weights(two_processes, runs):
    """Rank 1 dies in epoch 2 (step 9 of 12); torchrun restarts the group, which resumes from
    epoch 1's checkpoint by itself: each epoch logged once, and the weights of a run that never
    failed, bit for bit (which also shows that two runs with one seed agree exactly)."""
    out = runs / "killed"
    proc = launch([*TRAIN, "--epochs", "2", "--out", str(out)], 2, "--max-restarts", "1",
                  KILL_AT="1:9")
    stdout = proc.stdout
    # the survivor either saw its collective fail and said so in one line (it was gloo's
    # traceback), or torchrun stopped it first: which comes first is a race between processes
    assert "Traceback" not in proc.stderr, proc.stderr
    lost = re.search(r"^mnist-cnn: error: rank 0 lost the other processes of its group \(",
                     proc.stderr, re.M)
    assert lost or "closing signal SIGTERM" in proc.stderr, proc.stderr
    assert "resuming" in stdout and "after epoch 1" in stdout
    assert stdout.count("Epoch: 0001") == 1 and stdout.count("Epoch: 0002") == 1
    assert epochs_logged(out) == [1, 2]
    straight, _ = two_processes
    assert max_difference(out / "last.safetensors", straight / "last.safetensors") == 0


def test_a_two_process_checkpoint_resumes_in_one_process(two_processes, one_process, runs,
                                                         monkeypatch):
    out = runs / "two-then-one"
    shutil.copytree(two_processes[0], out)
    in_process([*TRAIN, "--epochs", "3", "--out", str(out), "--resume"], monkeypatch)
    assert epochs_logged(out) == [1, 2, 3]
    assert max_difference(out / "last.safetensors", one_process[3]) < TOLERANCE


def test_a_one_process_checkpoint_resumes_in_two_processes(one_process, runs):
    out = runs / "one-then-two"
    shutil.copytree(one_process[2].parent, out)
    stdout = torchrun([*TRAIN, "--epochs", "3", "--out", str(out), "--resume"])
    assert stdout.count("resuming") == 1
    assert epochs_logged(out) == [1, 2, 3]
    assert max_difference(out / "last.safetensors", one_process[3]) < TOLERANCE


def test_a_taken_folder_is_refused_by_every_rank(two_processes):
    out, _ = two_processes
    command = torchrun_command([*TRAIN, "--epochs", "1", "--out", str(out)],
                               "--nproc-per-node", "2", "--rdzv-backend", "c10d",
                               "--rdzv-endpoint", f"127.0.0.1:{free_port()}")
    proc = subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT,
                          env=worker_env())
    assert proc.returncode != 0
    assert "already holds a run" in proc.stderr
    assert epochs_logged(out) == [1, 2]  # untouched


def test_two_machines_train_together(two_processes, runs):
    """Two torchrun agents, one process each, meet at a c10d rendezvous on 127.0.0.1: the same
    two ranks as one machine with two processes, so the same weights exactly."""
    out = runs / "two-nodes"
    launch = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
              "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "two-nodes"]
    command = torchrun_command([*TRAIN, "--epochs", "2", "--out", str(out)], *launch)
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=worker_env()) for _ in range(2)]
    try:
        results = [node.communicate(timeout=LAUNCH_TIMEOUT) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [node.returncode for node in nodes] == [0, 0], results
    assert sum(stdout.count("2 processes: global batch 100") for stdout, _ in results) == 1
    assert max_difference(out / "last.safetensors", two_processes[0] / "last.safetensors") == 0


# --------------------------------------------------------------------------------------------
# ensembles


def test_ensemble_members_spread_over_ranks_equal_a_sequential_run(runs, monkeypatch):
    args = ["ensemble", "train", "--model", "simple", "--members", "3", "--epochs", "1",
            "--threads", "1", "--no-progress"]
    stdout = torchrun([*args, "--out", str(runs / "ens-2")])
    in_process([*args, "--out", str(runs / "ens-1")], monkeypatch)
    assert stdout.count("Ensemble accuracy") == 1  # rank 0 evaluates, after the others finish
    assert "rank 1: member 2/3" in stdout and "rank 0: member 3/3" in stdout
    for k in range(3):
        a, b = (runs / run / f"member-{k}" / "last.safetensors" for run in ("ens-2", "ens-1"))
        assert max_difference(a, b) == 0
    assert max_difference(runs / "ens-1" / "member-0" / "last.safetensors",
                          runs / "ens-1" / "member-1" / "last.safetensors") > 0



# --------------------------------------------------------------------------------------------
# what each process learns from torchrun's environment (no process group needed)


@pytest.fixture
def launched_as_rank_1_of_2(monkeypatch):
    from mnist_cnn.runtime import device, distributed

    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
                        "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    joined = []
    monkeypatch.setattr(distributed, "start", lambda dev, launch: joined.append((dev, launch)))
    monkeypatch.setattr(device, "cpu_count", lambda: 8)
    threads = torch.get_num_threads()
    yield joined
    torch.set_num_threads(threads)


def test_each_process_takes_its_share_of_the_cores(launched_as_rank_1_of_2):
    from mnist_cnn.runtime.device import setup

    runtime = setup("cpu", distributed=True)
    assert (runtime.rank, runtime.world_size, runtime.is_main) == (1, 2, False)
    assert runtime.tuner is None and torch.get_num_threads() == 4  # 8 cores, 2 processes
    assert [launch.local_rank for _, launch in launched_as_rank_1_of_2] == [1]
    assert setup("cpu", threads=3, distributed=True).tuner is None
    assert torch.get_num_threads() == 3
    assert setup("cpu", threads=1).world_size == 1  # only training commands join the group


def test_a_broken_torchrun_environment_is_a_one_line_error(launched_as_rank_1_of_2, monkeypatch):
    from mnist_cnn.runtime.device import setup

    monkeypatch.setenv("RANK", "2")
    with pytest.raises(MnistCnnError, match="inconsistent torchrun environment"):
        setup("cpu", distributed=True)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(MnistCnnError, match="WORLD_SIZE"):
        setup("cpu", distributed=True)


def test_a_wrong_timeout_is_a_one_line_error(monkeypatch):
    from mnist_cnn.runtime import distributed

    for value in ("0", "-5", "9" * 30):  # the last overflowed a timedelta
        monkeypatch.setenv("MNIST_CNN_DIST_TIMEOUT", value)
        with pytest.raises(MnistCnnError, match=f"MNIST_CNN_DIST_TIMEOUT is {value[:17]}.*: .* "
                           "must be from 1 to 2,592,000"):
            distributed.timeout()


def test_no_processes_per_machine_is_a_one_line_error(launched_as_rank_1_of_2, monkeypatch):
    from mnist_cnn.runtime.device import setup

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "0")  # each process's share of the cores divided by it
    with pytest.raises(MnistCnnError, match="inconsistent torchrun environment: .*"
                       "LOCAL_WORLD_SIZE=0"):
        setup("cpu", distributed=True)


def test_leftover_torchrun_variables_say_what_the_run_waits_for(tmp_path):
    """RANK=0 WORLD_SIZE=2 left in the environment, without torchrun: the run once waited 600 s
    without a word. Now it says, within seconds, what it waits for, and gives up in one line."""
    import time

    env = worker_env(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(free_port()), MNIST_CNN_DIST_TIMEOUT="12")
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, str(WORKER), *TRAIN, "--epochs", "1", "--out",
                                str(tmp_path / "run")], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    first = process.stderr.readline()
    noticed = time.monotonic() - started
    rest = process.stderr.read()
    assert process.wait(timeout=LAUNCH_TIMEOUT) == 1
    assert first == ("mnist-cnn: rank 0 of 2 is waiting for the other 1 process at "
                     f"127.0.0.1:{env['MASTER_PORT']}, 12 s at most (RANK=0 and WORLD_SIZE=2 "
                     "are set, but not by torchrun: unset them for a single-process run)\n")
    assert noticed < 11  # 5 s after it started to wait (and the imports before)
    assert rest.startswith("mnist-cnn: error: cannot join the torchrun process group: ")
    assert rest.count("\n") == 1 and "Traceback" not in rest
