"""Several processes, one training run: what torchrun tells each process, and the few collective
operations the training loop needs.

torchrun starts the processes and sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and
TORCHELASTIC_RESTART_COUNT in their environment; we never launch anything ourselves. Without
torchrun (or with one process) nothing here does anything.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from ..errors import MnistCnnError

if TYPE_CHECKING:
    from .device import Runtime

# How long a collective waits for the other ranks before failing (MNIST_CNN_DIST_TIMEOUT
# seconds): long enough for rank 0's validation and checkpoint between two steps, short enough
# that a rank whose peers are gone does not wait forever. torchrun stops a failed group sooner.
DEFAULT_TIMEOUT = 600
MAX_TIMEOUT = 30 * 24 * 3600  # a month; torch keeps timeouts in milliseconds of a C++ integer
MAX_WORLD = 2 ** 20  # processes in a group: far more than any cluster runs


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun launch (a plain run: rank 0 of 1)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    restart_count: int = 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise MnistCnnError(f"${name} is {text!r}, not a whole number (torchrun sets it; "
                            "unset it for a single-process run)") from None


def launch_from_env() -> Launch:
    """Read the variables torchrun sets; without them, a single process."""
    launch = Launch(rank=_env_int("RANK", 0), world_size=_env_int("WORLD_SIZE", 1),
                    local_rank=_env_int("LOCAL_RANK", 0),
                    local_world_size=_env_int("LOCAL_WORLD_SIZE", 1),
                    restart_count=restart_count())
    if (not 0 <= launch.rank < launch.world_size <= MAX_WORLD or not 0 <= launch.local_rank
            or not 1 <= launch.local_world_size <= launch.world_size):
        raise MnistCnnError(f"inconsistent torchrun environment: RANK={short(launch.rank)}, "
                            f"WORLD_SIZE={short(launch.world_size)}, "
                            f"LOCAL_RANK={short(launch.local_rank)}, "
                            f"LOCAL_WORLD_SIZE={short(launch.local_world_size)}")
    return launch


def restart_count() -> int:
    """How many times torchrun has restarted this group after a failure (0 without torchrun)."""
    return _env_int("TORCHELASTIC_RESTART_COUNT", 0)


def timeout() -> timedelta:
    seconds = _env_int("MNIST_CNN_DIST_TIMEOUT", DEFAULT_TIMEOUT)
    if not 1 <= seconds <= MAX_TIMEOUT:
        raise MnistCnnError(f"$MNIST_CNN_DIST_TIMEOUT is {short(seconds)}: the seconds a process "
                            f"waits for the others must be from 1 to {MAX_TIMEOUT:,}")
    return timedelta(seconds=seconds)


def short(n: int) -> str:
    text = str(n)
    return text if len(text) <= 20 else text[:17] + "..."


def first_line(e: BaseException) -> str:
    """An error of torch.distributed in one line: without gloo's source location, or the C++
    stack that some messages carry after their first line."""
    lines = str(e).strip().splitlines() or [type(e).__name__]
    return re.sub(r"^\[[^\]]*\] *", "", lines[0]).split(". ")[0]  # gloo adds advice, an emoji


# A process still waiting for its group after this many seconds says what it waits for
WAIT_NOTICE = 5.0


def start(device: torch.device, launch: Launch) -> None:
    """Join the process group: gloo for CPU tensors, NCCL for CUDA ones (one GPU per rank)."""
    if dist.is_initialized():
        return
    if device.type == "cuda":  # device.setup has made it this process's current GPU
        backend = "cpu:gloo,cuda:nccl"  # NCCL for gradients; gloo for the small CPU messages
    else:
        backend = "gloo"
    wait = timeout()
    # leftover RANK and WORLD_SIZE variables, without torchrun, once made a run wait silently
    notice = threading.Timer(WAIT_NOTICE, print, [waiting_for(launch)], {"file": sys.stderr})
    notice.daemon = True
    notice.start()
    try:
        store, rank, world_size = next(dist.rendezvous("env://", timeout=wait))
        # torchrun's store outlives a restart, and (torch 2.13) a restarted group found the dead
        # group's gloo addresses there and failed to connect: each attempt gets its own keys
        store = dist.PrefixStore(f"mnist-cnn/attempt-{launch.restart_count}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=wait)
    except (RuntimeError, ValueError) as e:
        raise MnistCnnError(f"cannot join the torchrun process group: {first_line(e)}") from None
    finally:
        notice.cancel()


def waiting_for(launch: Launch) -> str:
    address = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    others = launch.world_size - 1
    line = (f"mnist-cnn: rank {launch.rank} of {launch.world_size} is waiting for the other "
            f"{others} process{'es' if others > 1 else ''} at {address}, "
            f"{timeout().total_seconds():.0f} s at most")
    if "TORCHELASTIC_RUN_ID" not in os.environ:  # torchrun sets it
        line += (f" (RANK={launch.rank} and WORLD_SIZE={launch.world_size} are set, but not by "
                 "torchrun: unset them for a single-process run)")
    return line


@contextlib.contextmanager
def peers_lost_as_error(runtime: Runtime) -> Iterator[None]:
    """A collective failing because another process of the group went away is one line, not
    gloo's traceback: torchrun restarts the group, if its --max-restarts allows."""
    try:
        yield
    except RuntimeError as e:
        text = str(e).lower()
        if runtime.world_size == 1 or not ("gloo" in text or "nccl" in text
                                           or isinstance(e, dist.DistError)):
            raise
        raise MnistCnnError(f"rank {runtime.rank} lost the other processes of its group "
                            f"({first_line(e)})") from None


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# The helpers below take the runtime: a process of a torchrun group may still train alone (an
# ensemble's member), with a runtime of world size 1; then they do nothing.


def broadcast_ints(values: list[int], runtime: Runtime) -> list[int]:
    """Rank 0's `values`, on every rank (the others' values are ignored)."""
    if runtime.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.int64)
    dist.broadcast(tensor, src=0)
    return tensor.tolist()


def on_rank0(attempt: Callable[[], list[int]], count: int, runtime: Runtime, failure: str
             ) -> list[int]:
    """Rank 0 runs `attempt`, which gives `count` ints; every rank gets them. If it fails, every
    rank fails rather than leaving the others waiting: rank 0 with its own error, the others
    with `failure` (the one place where "rank 0 tries, the others get its verdict" is written)."""
    values, error = [0] * count, None
    if runtime.is_main:
        try:
            values = attempt()
        except MnistCnnError as e:
            error = e
    ok, *values = broadcast_ints([error is None, *values], runtime)
    if error is not None:
        raise error
    if not ok:
        raise MnistCnnError(failure)
    return values


def read_on_rank0(path: Path, runtime: Runtime,
                  read: Callable[[Path], bytes] = Path.read_bytes) -> bytes | None:
    """The file's bytes as rank 0 reads them with `read` (None if it has no such file), on
    every rank. Only rank 0 needs the run folder: the other ranks may be on machines without it.
    A read that fails on rank 0 fails on every rank.
    """
    if runtime.world_size == 1:
        return read(path) if path.is_file() else None
    data = None

    def attempt() -> list[int]:
        nonlocal data
        if path.is_file():
            data = read(path)
        return [-1 if data is None else len(data)]

    (size,) = on_rank0(attempt, 1, runtime,
                       f"{path}: rank 0 could not read it (its message says why)")
    if size < 0:
        return None
    buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if data is not None
              else torch.empty(size, dtype=torch.uint8))
    if size:
        dist.broadcast(buffer, src=0)
    return data if data is not None else buffer.numpy().tobytes()


def sum_over_ranks(tensor: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    if runtime.world_size > 1:
        dist.all_reduce(tensor)
    return tensor


def barrier(runtime: Runtime, wait: timedelta | None = None) -> None:
    """Wait for every rank; `wait` bounds it (default: the group's timeout).

    gloo's monitored barrier names the ranks that did not arrive; on GPUs it runs in a gloo
    group of its own, as NCCL's barrier has no timeout of its own.
    """
    if runtime.world_size == 1:
        return
    group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    dist.monitored_barrier(group, timeout=wait or timeout())
