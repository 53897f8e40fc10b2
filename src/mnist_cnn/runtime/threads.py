"""CPU threads that follow the machine's load (ThreadTuner), the cores this process may use, and
the allocator's policy for training."""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
import time
from collections.abc import Callable

import torch


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


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (its allocator can be tuned and trimmed), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None  # not glibc (e.g. musl)
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def tune_cpu_allocator() -> None:
    """Keep freed memory in the process instead of handing it back to the OS.

    glibc serves large tensors by mmap and trims freed heap memory, so every training step
    page-faults its activations in again; on the lecture's networks that cost a quarter of a
    step. Only the allocator's policy changes, never a number computed.
    """
    libc = glibc()
    if libc is None:
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
