"""Where and how the arithmetic runs: device, threads, memory layout and precision.

Decided here once and passed down; nothing else asks the hardware.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from dataclasses import dataclass

import torch

from .errors import MnistCnnError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str = "fp32"  # fp32 | bf16
    # oneDNN's convolutions (CPU) and cuDNN's tensor-core paths both prefer NHWC; False (NCHW)
    # is kept for measuring that choice (benchmarks/fast_levers.py).
    channels_last: bool = True

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


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def bf16_supported(device: torch.device) -> bool:
    """Whether bfloat16 runs natively (emulated bf16 is slower than fp32, so not worth it)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def setup(device: str = "auto", precision: str = "fp32", threads: int | None = None,
          tune_allocator: bool = False) -> Runtime:
    """Choose the device and precision, and set the CPU up; call once per process.

    `tune_allocator` keeps freed memory in the process (tune_cpu_allocator): right for training,
    wrong for a long-lived server, whose memory must go back after a burst of requests.
    """
    if precision not in ("fp32", "bf16"):
        raise MnistCnnError(f"unknown precision {precision!r}: use fp32 or bf16")
    dev = choose_device(device)
    if precision == "bf16" and not bf16_supported(dev):
        print(f"note: {dev} has no native bfloat16 arithmetic; using fp32", file=sys.stderr)
        precision = "fp32"
    if dev.type == "cpu":
        if tune_allocator:
            tune_cpu_allocator()
        torch.set_num_threads(threads or cpu_count())
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32; bf16 is the fast option
        torch.backends.cudnn.allow_tf32 = False
    return Runtime(dev, precision)
