"""Where and how the arithmetic runs: device, threads, memory layout and precision.

Decided here once and passed down; nothing else asks the hardware.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import MnistCnnError
from ..models.recipes import PRECISIONS, Precision


def read_cpu_busy(cpus: set[int] | None = None) -> float | None:
    """Seconds the given CPUs (default: all) have spent busy since boot, or None without /proc.

    Busy is everything but idle and I/O wait; steal (time a hypervisor gave to other machines)
    counts as busy, since our threads could not run then either.
    """
    try:
        with open("/proc/stat", "rb") as f:
            lines = f.read().decode().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
        ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK")


class ThreadTuner:
    """The number of CPU threads that is fastest now: the cores this process may use, less those
    that other processes keep busy. Training and evaluation call `poll()` between steps.

    PyTorch splits every operator evenly over its threads and waits for the last one, so a thread
    that shares its core with another busy process stalls all of them: with one busy process on 2
    cores, 2 threads trained about twice as slowly as 1 on an AMD EPYC (README, "Speed under load")
    and up to 20 times slower on an Intel Xeon. Every `interval` seconds this reads how
    much CPU time the machine spent that this process did not (/proc/stat against our own CPU
    time), and counts a core as taken once others use half of it, and as free again when they use
    under a quarter (the gap keeps the choice from flapping). On an idle machine it keeps every
    core, so its numbers are those of a fixed thread count; `--threads N` turns it off.
    """

    def __init__(self, cores: int, interval: float = 0.5,
                 read_busy: Callable[[], float | None] | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 own_cpu: Callable[[], float] = time.process_time) -> None:
        self.cores, self.interval = cores, interval
        # the first check comes sooner: a step at 2 threads beside a busy process can take
        # longer than the whole wait, and the first steps of a run are its slowest
        self.first_interval, self._checked = min(interval, 0.1), False
        self.read_busy = read_busy or (lambda: read_cpu_busy(allowed_cpus()))
        self.clock, self.own_cpu = clock, own_cpu
        self.threads = cores
        self.others = 0.0  # cores' worth of CPU that other processes used in the last interval
        self.used: set[int] = set()  # every count that ran a step since `reset_used()`
        self._last = self._sample()
        torch.set_num_threads(cores)

    def _sample(self) -> tuple[float, float | None, float]:
        return self.clock(), self.read_busy(), self.own_cpu()

    def poll(self) -> int:
        """The thread count for the next step, after checking the load if `interval` has passed
        since the last check (the first check comes a tenth of a second after the tuner was made,
        in practice before the first step)."""
        wait = self.interval if self._checked else self.first_interval
        if self.clock() - self._last[0] >= wait:
            self._checked = True
            self._check()
        self.used.add(self.threads)
        return self.threads

    def _check(self) -> None:
        sample = self._sample()
        (t0, busy0, own0), (t1, busy1, own1) = self._last, sample
        self._last = sample
        if busy0 is not None and busy1 is not None:  # without /proc/stat the count stays
            self.others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0)
            self.set(self.choose(self.others))

    def choose(self, others: float) -> int:
        taken_now = math.floor(others + 0.5)  # a core is taken once others use half of it
        still_taken = math.floor(others + 0.75)  # and free again below a quarter
        if self.cores - taken_now < self.threads:
            return max(1, self.cores - taken_now)
        if self.cores - still_taken > self.threads:
            return min(self.cores, self.cores - still_taken)
        return self.threads

    def set(self, threads: int) -> None:
        if threads != self.threads:
            torch.set_num_threads(threads)
            self.threads = threads

    def reset_used(self) -> list[int]:
        used, self.used = sorted(self.used), set()
        return used


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: Precision = "fp32"
    # oneDNN's convolutions (CPU) and cuDNN's tensor-core paths both prefer NHWC; False (NCHW)
    # is kept for measuring that choice (benchmarks/fast_levers.py).
    channels_last: bool = True
    # CPU threads that follow the machine's load (None: a fixed count, or not a CPU)
    tuner: ThreadTuner | None = field(default=None, compare=False)
    # this process's place among torchrun's processes (distributed.py); rank 0 of 1 otherwise
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes files (rank 0)."""
        return self.rank == 0

    def poll_threads(self) -> None:
        """Between steps: let the thread count follow the machine's load."""
        if self.tuner is not None:
            self.tuner.poll()

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def to_batch(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)


def choose_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MnistCnnError("--device cuda: no CUDA GPU is available to PyTorch here "
                            f"(torch {torch.__version__}); use --device cpu or auto")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise MnistCnnError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def tune_cpu_allocator() -> None:
    """Keep freed memory in the process instead of handing it back to the OS.

    glibc serves large tensors by mmap and trims freed heap memory, so every training step
    page-faults its activations in again; on the lecture's networks that cost a quarter of a
    step. Only the allocator's policy changes, never a number computed.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc (e.g. musl): nothing to tune
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 1 << 30)


def allowed_cpus() -> set[int] | None:
    try:
        return os.sched_getaffinity(0)
    except AttributeError:
        return None


def cpu_count() -> int:
    cpus = allowed_cpus()
    return len(cpus) if cpus else os.cpu_count() or 1


def bf16_supported(device: torch.device) -> bool:
    """Whether bfloat16 runs natively (emulated bf16 is slower than fp32, so not worth it)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def setup(device: str = "auto", precision: str = "fp32", threads: int | None = None,
          tune_allocator: bool = False, distributed: bool = False) -> Runtime:
    """Choose the device and precision, and set the CPU up; call once per process.

    `threads` fixes the CPU thread count; by default it follows the machine's load (ThreadTuner).
    `tune_allocator` keeps freed memory in the process (tune_cpu_allocator): right for training,
    wrong for a long-lived server, whose memory must go back after a burst of requests.
    With `distributed`, a process started by torchrun joins its process group: one GPU per
    process (LOCAL_RANK), or on CPUs an equal share of the cores for each of the machine's
    processes (a load-following count would fight its own siblings).
    """
    from . import distributed as dist  # torch.distributed loads only where it is needed

    if precision not in PRECISIONS:
        raise MnistCnnError(f"unknown precision {precision!r}: use {' or '.join(PRECISIONS)}")
    launch = dist.launch_from_env() if distributed else dist.Launch()
    dev = choose_device(device)
    if launch.world_size > 1:
        if dev.type == "cuda" and dev.index is None:
            if launch.local_rank >= torch.cuda.device_count():
                raise MnistCnnError(f"local rank {launch.local_rank} has no GPU of its own "
                                    f"({torch.cuda.device_count()} here): start at most that "
                                    "many processes per machine (--nproc-per-node)")
            dev = torch.device("cuda", launch.local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)  # NCCL's communicator and cuDNN work on this GPU
        if dev.type == "cpu" and not threads:
            threads = max(1, cpu_count() // launch.local_world_size)
        dist.start(dev, launch)
    if precision == "bf16" and not bf16_supported(dev):
        print(f"note: {dev} has no native bfloat16 arithmetic; using fp32", file=sys.stderr)
        precision = "fp32"
    tuner = None
    if dev.type == "cpu":
        if tune_allocator:
            tune_cpu_allocator()
        if threads:
            torch.set_num_threads(threads)
        else:
            tuner = ThreadTuner(cpu_count())
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32; bf16 is the fast option
        torch.backends.cudnn.allow_tf32 = False
    return Runtime(dev, precision, tuner=tuner, rank=launch.rank, world_size=launch.world_size)


# --------------------------------------------------------------------------------------------
# What decides the numbers: printed by `mnist-cnn env` and at the top of every benchmark


CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def describe_environment() -> dict[str, object]:
    """The CPU, its instruction sets that matter to oneDNN, cores, library versions and GPUs."""
    cpuinfo = ""
    with contextlib.suppress(OSError):
        cpuinfo = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()

    def field_of(name: str) -> str | None:
        match = re.search(rf"^{name}\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
        return match.group(1).strip() if match else None

    flags = set((field_of("flags") or "").split())
    config = torch.__config__.show()
    onednn = re.search(r"MKL-DNN v([\w.]+)", config)
    cuda = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else ["none"])
    return {
        "cpu": field_of("model name") or platform.processor() or platform.machine(),
        "cpu family/model": f"{field_of('cpu family')}/{field_of('model')}",
        "cpu features": [f for f in CPU_FEATURES if f in flags] if flags else "unknown",
        "cores available": cpu_count(),
        "cores in machine": os.cpu_count(),
        "load average (1 min)": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "oneDNN": onednn.group(1) if onednn else None,
        "ATen CPU capability": torch.backends.cpu.get_cpu_capability(),
        "native bf16 on CPU": bf16_supported(torch.device("cpu")),
        "CUDA devices": cuda,
    }


def format_environment(env: dict[str, object] | None = None) -> str:
    env = env or describe_environment()
    return "\n".join(f"{k + ':':<22}{', '.join(map(str, v)) if isinstance(v, list) else v}"
                     for k, v in env.items())
