"""What decides the numbers: the CPU, its instruction sets, cores, library versions and GPUs,
printed by `mnist-cnn env` and at the top of every benchmark."""

from __future__ import annotations

import contextlib
import os
import platform
import re

import torch

from .device import bf16_supported, gpu_names
from .threads import cpu_count

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
    cuda = gpu_names() or ["none"]
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
