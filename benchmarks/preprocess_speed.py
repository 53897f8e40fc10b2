"""How long reading a photo takes before the network: decoding and preprocessing a 1-megapixel
and a 12-megapixel phone photo of a digit on a notebook page (JPEG), on one thread, as
`mnist-cnn predict` and the server do it (both shrink to imaging.WORK_PIXELS first).

Prints the median of --repeat runs for each step and size (and the fastest run of the
preprocessing, which other processes on a shared machine slow down least), and the CPU.

Usage: python benchmarks/preprocess_speed.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np

from mnist_cnn.images import pen
from mnist_cnn.images.notebook import Condition, jpeg_bytes, photograph_page
from mnist_cnn.images.preprocess import WORK_PIXELS, load_image, preprocess
from mnist_cnn.runtime.environment import format_environment


def photo(megapixels: float, seed: int) -> bytes:
    """A JPEG of a digit on ruled paper, `megapixels` large (4:3), the digit 5-25% as tall."""
    rng = np.random.default_rng(seed)
    height = round(np.sqrt(megapixels * 1e6 * 3 / 4))
    small = photograph_page(pen.draw("4", rng), rng, Condition(
        paper="ruled", pen="blue", shadow=True, desk=False, tilt=3.0, height=min(height, 900),
        digit_share=0.25 if megapixels < 4 else 0.08))
    big = cv2.resize(small, (round(height * 4 / 3), height), interpolation=cv2.INTER_CUBIC)
    return jpeg_bytes(big, 90)


def times_ms(work, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(1000 * (time.perf_counter() - start))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    print(format_environment(), flush=True)
    print(f"\nshrunk to at most {WORK_PIXELS:,} pixels first; medians of {args.repeat} runs, "
          "one thread")
    print(f"{'photo':>8s} {'bytes':>10s} {'decode':>9s} {'preprocess':>11s} {'total':>9s} "
          f"{'fastest preprocess':>19s}")
    for megapixels in (1, 12):
        data = photo(megapixels, seed=megapixels)
        image = load_image(data)
        decode = statistics.median(times_ms(lambda: load_image(data), args.repeat))  # noqa: B023
        steps = times_ms(lambda: preprocess(image), args.repeat)  # noqa: B023
        middle = statistics.median(steps)
        print(f"{megapixels:>6d}MP {len(data):>10,d} {decode:>7.1f}ms {middle:>9.1f}ms "
              f"{decode + middle:>7.1f}ms {min(steps):>17.1f}ms", flush=True)


if __name__ == "__main__":
    main()
