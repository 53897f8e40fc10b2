"""Throughput of `augment_batch` on random data: images per second, by batch size and preset.

Run: .venv/bin/python benchmarks/augment_speed.py
Reports the median of 20 timed batches, which shrugs off other processes sharing the CPU. Both
torch's default thread count and a single thread are shown: on a busy machine one thread can win.
"""

import statistics
import time

import torch

from mnist_cnn.runtime.environment import format_environment
from mnist_cnn.training.augment import augment_batch, preset

WARMUP = 3
ITERS = 20


def images_per_second(batch_size: int, preset_name: str) -> float:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 1, 28, 28, generator=generator)
    config = preset(preset_name)
    for _ in range(WARMUP):  # first calls pay for allocation and kernel selection
        augment_batch(images, config, generator)
    times = []
    for _ in range(ITERS):
        start = time.perf_counter()
        augment_batch(images, config, generator)
        times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def main() -> None:
    print(format_environment(), "\n", flush=True)
    for threads in sorted({torch.get_num_threads(), 1}, reverse=True):
        torch.set_num_threads(threads)
        print(f"augment_batch on CPU, {threads} thread(s), median of {ITERS} batches")
        for preset_name in ("standard", "elastic"):
            for batch_size in (128, 512):
                rate = images_per_second(batch_size, preset_name)
                print(f"  {preset_name:>8}  batch {batch_size:>3}: {rate:>10,.0f} images/s")


if __name__ == "__main__":
    main()
