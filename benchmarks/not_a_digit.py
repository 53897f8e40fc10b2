"""How well the shipped network tells digits from things that are not digits (novelty.py).

Builds photographed test sets (synthetic.py): MNIST digits and font digits as photos, and
non-digits: letters that look like no digit, hand-drawn shapes, scribbles, Fashion-MNIST images.
Each image goes through predict's preprocessing. Two disjoint splits: `calibration` (MNIST
validation digits, one third of the fonts, seed 1) sets the threshold, `report` (MNIST test
digits, another third of the fonts, seed 2) measures it; outlier exposure in training
(training.outlier_pool) uses the last third of the fonts and other seeds.

Prints, per set, the share accepted as digits (and, for digits, accepted and read right), with
the threshold in the checkpoint's metadata, and writes the ROC curve (digits vs non-digits) as
a PNG.

Usage: .venv/bin/python benchmarks/not_a_digit.py [checkpoint] [--plot not-a-digit-roc.png]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from mnist_cnn import load_dataset
from mnist_cnn.data.dataset import Split
from mnist_cnn.images.preprocess import ImageError, preprocess
from mnist_cnn.images.synthetic import (
    NOT_DIGIT_LETTERS,
    SHAPES,
    font_paths,
    letter,
    photograph,
    scribble,
    shape,
    written_glyph,
)
from mnist_cnn.inference.evaluation import predict_proba
from mnist_cnn.inference.novelty import confidence, is_digit
from mnist_cnn.inference.plots import roc_curve, save
from mnist_cnn.models.checkpoint import load_checkpoint, pretrained_path
from mnist_cnn.runtime.environment import format_environment

SPLITS = {"calibration": (1, 0), "report": (2, 1)}  # seed, which third of the fonts
DIGITS = ("mnist digits", "font digits")


def fonts_of(third: int) -> list:
    return font_paths()[third::3]


def build_sets(split: str, digits: Split, fashion: Split | None, count: int = 1000
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Name -> (28x28 images as predict sees them (N, 1, 28, 28) uint8, labels or None)."""
    seed, third = SPLITS[split]
    rng = np.random.default_rng(seed)
    fonts = fonts_of(third)
    sources: dict[str, list[tuple[np.ndarray, int | None]]] = {
        "mnist digits": [(photograph(digits.images[i, 0].numpy(), rng), int(digits.labels[i]))
                         for i in rng.choice(len(digits), count, replace=False)],
        "font digits": [(photograph(written_glyph(str(d), f, rng, 64), rng), d)
                        for f in fonts for d in range(10) for _ in range(6)],
        "letters": [(photograph(letter(c, f, rng), rng), None)
                    for f in fonts for c in NOT_DIGIT_LETTERS for _ in range(2)],
        "shapes": [(photograph(shape(k, rng), rng), None) for k in SHAPES for _ in range(count // 40)],
        "scribbles": [(photograph(scribble(rng), rng), None) for _ in range(count // 4)],
    }
    if fashion is not None:  # the test images for the report, training ones for calibration
        sources["fashion-mnist"] = [(photograph(fashion.images[i, 0].numpy(), rng), None)
                                    for i in rng.choice(len(fashion), count // 2, replace=False)]
    sets = {}
    for name, items in sources.items():
        images, labels = [], []
        for photo, label in items:
            try:
                images.append(torch.from_numpy(preprocess(photo).final)[None])
            except ImageError:  # refused before the network (no ink): counts as refused
                images.append(torch.zeros(1, 28, 28, dtype=torch.uint8))
            labels.append(label)
        sets[name] = (torch.stack(images),
                      torch.tensor(labels) if labels[0] is not None else None)
    return sets


def load_fashion(split: str) -> Split | None:
    try:
        data = load_dataset("fashion-mnist", download=False)
    except Exception as e:  # optional: the report says it was left out
        print(f"Fashion-MNIST left out: {e}")
        return None
    return data.test if split == "report" else data.val


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", nargs="?", default=str(pretrained_path()))
    parser.add_argument("--plot", default="not-a-digit-roc.png")
    args = parser.parse_args()
    print(format_environment(), "\n", flush=True)
    torch.set_num_threads(1)
    model, meta = load_checkpoint(args.checkpoint)
    threshold = meta.digit_threshold
    mnist = load_dataset("mnist")
    sets = build_sets("report", mnist.test, load_fashion("report"))
    print(f"{args.checkpoint}: threshold {threshold}")
    digit_scores, other_scores, right, total_digits, refused, total_other = [], [], 0, 0, 0, 0
    for name, (images, labels) in sets.items():
        probs = predict_proba(model, images)
        accepted = is_digit(probs, threshold)
        if labels is not None:
            ok = accepted & (probs.argmax(1) == labels)
            print(f"{name:14} {len(images):5}  accepted and right {ok.float().mean():.2%}  "
                  f"(right {(probs.argmax(1) == labels).float().mean():.2%})")
            right, total_digits = right + int(ok.sum()), total_digits + len(images)
            digit_scores.append(confidence(probs))
        else:
            print(f"{name:14} {len(images):5}  refused {(~accepted).float().mean():.2%}")
            refused, total_other = refused + int((~accepted).sum()), total_other + len(images)
            other_scores.append(confidence(probs))
    print(f"digits: {right / total_digits:.2%} accepted and right; non-digits: "
          f"{refused / total_other:.2%} refused")
    digit_scores, other_scores = torch.cat(digit_scores).numpy(), torch.cat(other_scores).numpy()
    for accept in (0.99, 0.98, 0.95):  # what any threshold could do on this split, for comparison
        cut = np.quantile(digit_scores, 1 - accept)
        print(f"(a threshold accepting {accept:.0%} of these digits would refuse "
              f"{np.mean(other_scores < cut):.2%} of the non-digits)")
    figure = roc_curve(digit_scores, other_scores, threshold)
    print(f"wrote {save(figure, args.plot)}")


if __name__ == "__main__":
    main()
