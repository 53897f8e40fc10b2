"""Where and how the arithmetic runs: device, threads, memory layout and precision (the thread
tuner and the allocator are threads.py's, the environment report environment.py's).

Decided here once and passed down; nothing else asks the hardware.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field

import torch

from ..errors import MnistCnnError
from ..models.recipes import PRECISIONS, Precision, is_precision
from .threads import ThreadTuner, cpu_count, tune_cpu_allocator


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


def gpu_names() -> list[str]:
    """The CUDA GPUs PyTorch sees, by name (for the environment report); none without CUDA."""
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


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

    if not is_precision(precision):
        raise MnistCnnError(f"unknown precision {precision!r}: use {' or '.join(PRECISIONS)}")
    chosen: Precision = precision
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
    if chosen == "bf16" and not bf16_supported(dev):
        print(f"note: {dev} has no native bfloat16 arithmetic; using fp32", file=sys.stderr)
        chosen = "fp32"
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
    return Runtime(dev, chosen, tuner=tuner, rank=launch.rank, world_size=launch.world_size)
