"""Whole numbers: the share of composed rows of 2 to 6 digits read exactly, by length.
(Not named numbers.py: a script's folder comes first on sys.path, and the standard library's
`numbers`, which numpy and torch import, would be this file.)

Run: .venv/bin/python benchmarks/read_numbers.py [--rows 1000] [--split test|val] [--threads N]
    [--touching 0.2] [--without-whole-digit]
Rows are composed (mnist_cnn.images.synthetic.compose_row: random gaps, a fifth of the pairs
touching or overlapping (--touching), wobbling baselines and sizes, dark ink on light paper)
from MNIST digits of the chosen split (test by default; val is what the segmentation was tuned
on) and from font digits, and read by the shipped network, calibrated and with its "not a
digit" threshold as predict loads it (mnist_cnn.inference.predict.load_predictor), through
mnist_cnn.inference.numbers.read_number, with the whole-digit check unless told not to.
Needs MNIST (MNIST_DATA_DIR or the cache).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mnist_cnn.data.dataset import load_dataset
from mnist_cnn.images import synthetic
from mnist_cnn.images.preprocess import ImageError
from mnist_cnn.inference.numbers import read_number
from mnist_cnn.inference.predict import load_predictor
from mnist_cnn.models.checkpoint import pretrained_path
from mnist_cnn.runtime.device import setup
from mnist_cnn.runtime.environment import format_environment

LENGTHS = range(2, 7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="rows per length and source")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--touching", type=float, default=0.2,
                        help="the share of neighbouring digits that touch or overlap")
    parser.add_argument("--without-whole-digit", action="store_true",
                        help="cut touching digits by the digit network alone (to compare)")
    args = parser.parse_args()
    runtime = setup("cpu", threads=args.threads)
    print(format_environment())
    models, classes, threshold = load_predictor([pretrained_path()])  # as predict reads
    split = getattr(load_dataset("mnist", download=False), args.split)
    images, labels = split.images[:, 0].numpy(), split.labels.numpy()
    print(f"{args.rows} rows per length; MNIST {args.split} digits and font digits; "
          f"network: {pretrained_path().name}"
          f"{', without the whole-digit check' if args.without_whole_digit else ''}; "
          f"{args.touching:.0%} of neighbours touching")

    for source in ("mnist", "font"):
        rng = np.random.default_rng(args.seed)
        shares, start = [], time.perf_counter()
        for length in LENGTHS:
            exact = 0
            for _ in range(args.rows):
                if source == "mnist":
                    row, text = synthetic.mnist_row(images, labels, length, rng,
                                                    touching=args.touching)
                else:
                    row, text = synthetic.font_row(length, rng, touching=args.touching)
                try:
                    reading = read_number(row, models, classes, runtime, digit_threshold=threshold,
                                          whole_digit=not args.without_whole_digit)
                    exact += reading.number == text
                except ImageError:
                    pass  # counted as wrong
            shares.append(exact / args.rows)
        per_row = (time.perf_counter() - start) / (args.rows * len(LENGTHS))
        by_length = "  ".join(f"{n}: {s:.1%}" for n, s in zip(LENGTHS, shares))
        print(f"{source:5s} read exactly  {by_length}  all: {np.mean(shares):.1%}  "
              f"({per_row * 1000:.0f} ms per row)")


if __name__ == "__main__":
    main()
