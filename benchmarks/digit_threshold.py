"""The "not a digit" threshold's trade-off on photos of the tuning split.

The thresholds that accept 99.5% to 97% of the calibration photos (the 3,000 photos of the tuning
split's digits that benchmarks/build_pretrained.py sets the shipped threshold on: seed 11), and
what each does to other photos of that split (seed 12: digits and handwritten letters, pen and
font, every condition): the share of the letters refused and of the digits accepted and read
right. The shipped threshold is printed beside them.

Usage: .venv/bin/python benchmarks/digit_threshold.py [checkpoint] [--digits 1500] [--letters 600]
"""

from __future__ import annotations

import argparse

from photos import Glyphs, photographed, tune_fields, tuning_digit

from mnist_cnn.inference.ensemble import ensemble_proba
from mnist_cnn.inference.novelty import calibrate_threshold, confidence
from mnist_cnn.inference.predict import load_predictor
from mnist_cnn.models.checkpoint import pretrained_path
from mnist_cnn.runtime.environment import format_environment

ACCEPTS = (0.995, 0.99, 0.98, 0.975, 0.97)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", default=str(pretrained_path()))
    parser.add_argument("--digits", type=int, default=1500)
    parser.add_argument("--letters", type=int, default=600)
    args = parser.parse_args()
    print(format_environment(), "\n", flush=True)
    models, _, shipped = load_predictor([args.checkpoint])
    calibration = confidence(ensemble_proba(models, tune_fields(3000, seed=11))).numpy()
    glyphs = Glyphs("tune", 12)
    digits, labels = photographed(glyphs, args.digits, tuning_digit)
    letters, _ = photographed(glyphs, args.letters, lambda g: (g.letter()[0], -1))
    digit_proba = ensemble_proba(models, digits)
    digit_scores, right = confidence(digit_proba), digit_proba.argmax(dim=1) == labels
    letter_scores = confidence(ensemble_proba(models, letters))
    print(f"{len(labels)} digit photos, {len(letter_scores)} letter photos (tuning split, seed 12)")
    print("threshold  accepts of calibration  letters refused  digits accepted and right")
    rows = [(f"{accept:.1%}", calibrate_threshold(calibration, accept)) for accept in ACCEPTS]
    if shipped is not None:
        rows.append(("shipped", shipped))
    for name, threshold in rows:
        refused = float((letter_scores < threshold).float().mean())
        kept = float(((digit_scores >= threshold) & right).float().mean())
        print(f"{threshold:9.4f}  {name:>22}  {refused:15.1%}  {kept:25.1%}")


if __name__ == "__main__":
    main()
