"""How well photos of handwriting on notebook paper are read, one column per condition.

Digits from four sources that the shipped network was not trained on (MNIST's test split,
scikit-learn's UCI digits from 43 other writers, digits drawn as pen trajectories, font digits),
each photographed by the notebook simulator (mnist_cnn.images.notebook) under one condition at a time:
plain, ruled or squared paper, a shadow's edge, pencil, coloured ink, thick and thin strokes, a
tilted page, a small photo (under 60 px), a large one (12 MP, the digit a few percent of it), and
everything at random ("mixed"). Every photo goes through what `mnist-cnn predict` does: a JPEG
file, decoded, shrunk, preprocessed, read by the network.

The report split (the default) uses sources and seeds never looked at while tuning; `--split
tune` is the one to tune on (MNIST's validation digits, other pen and font seeds; no UCI digits).

Prints, per source and condition: right (the network's best class), accepted and right (also
"a digit"), refused as blank; handwritten letters refused as "not a digit"; numbers of 2 to 6
digits read exactly; the expected calibration error of the shown probabilities.

Usage: python benchmarks/photos.py [--per-cell 30] [--split report|tune] [CHECKPOINT ...]
       [--plot reliability.png] [--save-failures DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from mnist_cnn import load_dataset
from mnist_cnn.images import pen, synthetic
from mnist_cnn.images.notebook import Condition, jpeg_bytes, mnist_glyph, photograph_page, row_ink
from mnist_cnn.images.preprocess import ImageError, load_and_preprocess, load_image, to_tensor
from mnist_cnn.inference.calibration import calibration_error
from mnist_cnn.inference.ensemble import ensemble_proba
from mnist_cnn.inference.novelty import is_digit
from mnist_cnn.inference.numbers import read_number
from mnist_cnn.inference.predict import ink_side, load_predictor
from mnist_cnn.models.checkpoint import pretrained_path
from mnist_cnn.runtime.environment import format_environment

CONDITIONS: dict[str, Condition] = {
    # one factor changed at a time from a plain photo of a ballpoint digit
    "plain": Condition(paper="plain", shadow=False, desk=False),
    "ruled": Condition(paper="ruled", shadow=False, desk=False),
    "squared": Condition(paper="squared", shadow=False, desk=False),
    "shadow": Condition(paper="plain", shadow=True, desk=False),
    "desk": Condition(paper="plain", shadow=False, desk=True),
    "pencil": Condition(paper="plain", pen="pencil", shadow=False, desk=False),
    "colour": Condition(paper="plain", shadow=False, desk=False),  # pen drawn from red, green, blue
    "thick": Condition(paper="plain", shadow=False, desk=False),  # stroke set below
    "thin": Condition(paper="plain", shadow=False, desk=False),
    "tilt": Condition(paper="ruled", shadow=False, desk=False),  # tilt set below
    "small": Condition(paper="plain", shadow=False, desk=False),  # height set below
    "large": Condition(paper="plain", shadow=False, desk=False, height=3000, digit_share=0.05),
    "mixed": Condition(),
}
SOURCES = ("mnist", "uci", "pen", "font")


def condition_for(name: str, rng: np.random.Generator) -> Condition:
    c = CONDITIONS[name]
    fields = dict(c.__dict__)
    if name not in ("pencil", "colour", "mixed"):
        fields["pen"] = str(rng.choice(["black", "blue"]))
    if name == "colour":
        fields["pen"] = str(rng.choice(["blue", "red", "green"]))
    if name != "mixed":
        fields["stroke"] = {"thick": rng.uniform(0.18, 0.25), "thin": rng.uniform(0.03, 0.05)
                            }.get(name, rng.uniform(0.07, 0.14))
        fields["tilt"] = rng.choice([-1, 1]) * rng.uniform(8, 15) if name == "tilt" else \
            rng.normal(0, 2)
        if fields["height"] is None:
            fields["height"] = int(rng.integers(20, 60)) if name == "small" else \
                int(rng.integers(80, 400))
    return Condition(**fields)


class Glyphs:
    """Digits (and letters) of each source for one split, drawn by index."""

    def __init__(self, split: str, seed: int) -> None:
        self.split, self.rng = split, np.random.default_rng(seed)
        data = load_dataset("mnist")
        self.mnist = data.test if split == "report" else data.val
        fonts = synthetic.font_paths()
        # thirds of the fonts: the first calibrates (and is tuned on), the second is the report's,
        # the last one's letters train "not a digit"
        self.fonts = fonts[1::3] if split == "report" else fonts[0::3]
        if split == "report":
            from sklearn.datasets import load_digits  # 1,797 digits of 43 other writers
            uci = load_digits()
            self.uci = (uci.images, uci.target)

    def digit(self, source: str, label: int) -> np.ndarray:
        rng = self.rng
        if source == "mnist":
            choices = np.flatnonzero(self.mnist.labels.numpy() == label)
            return mnist_glyph(self.mnist.images[rng.choice(choices), 0].numpy())
        if source == "uci":
            images, targets = self.uci
            small = images[rng.choice(np.flatnonzero(targets == label))] / 16.0
            big = cv2.resize(small.astype(np.float32), (64, 64), interpolation=cv2.INTER_CUBIC)
            return np.clip((big - 0.3) * 2.5 * 255, 0, 255).astype(np.uint8)
        if source == "pen":
            return pen.draw(str(label), rng)
        return synthetic.written_glyph(str(label), self.fonts[rng.integers(len(self.fonts))], rng)

    def letter(self) -> tuple[np.ndarray, str]:
        """A letter's ink and its source ("pen" or "font")."""
        rng = self.rng
        if rng.random() < 0.5:
            return pen.draw(str(rng.choice(list(pen.LETTERS))), rng), "pen"
        return synthetic.letter(str(rng.choice(list(synthetic.NOT_DIGIT_LETTERS))),
                                self.fonts[rng.integers(len(self.fonts))], rng), "font"


def photographed(glyphs: Glyphs, count: int, draw: Callable[[Glyphs], tuple[np.ndarray, int]]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` photos of what `draw` gives (ink and its label), each under one condition drawn
    at random, as predict sees them: (N, 1, 28, 28) uint8 and the labels. Those refused as blank
    are left out and drawn again."""
    conditions, fields, labels = list(CONDITIONS), [], []
    while len(fields) < count:
        ink, label = draw(glyphs)
        condition = condition_for(str(glyphs.rng.choice(conditions)), glyphs.rng)
        try:
            fields.append(load_and_preprocess(jpeg_bytes(photograph_page(ink, glyphs.rng,
                                                                         condition))).final)
        except ImageError:
            continue
        labels.append(label)
    return torch.from_numpy(np.stack(fields))[:, None], torch.tensor(labels)


def tuning_digit(glyphs: Glyphs) -> tuple[np.ndarray, int]:
    """A digit of the tuning split's sources (MNIST validation, pen, calibration fonts)."""
    source = str(glyphs.rng.choice(["mnist", "pen", "font"]))
    label = int(glyphs.rng.integers(10))
    return glyphs.digit(source, label), label


def tune_fields(count: int, seed: int) -> torch.Tensor:
    """`count` photos of the tuning split's digits, each under one condition drawn at random, as
    predict sees them: (N, 1, 28, 28) uint8."""
    return photographed(Glyphs("tune", seed), count, tuning_digit)[0]


def read_photos(photos: list[bytes], models, threshold: float | None
                ) -> tuple[torch.Tensor | None, list, list]:
    """Probabilities for each photo that preprocesses, whether it is a digit (as predict
    decides it, by the ink's size too) and which photos preprocessed (the others are refused
    as blank)."""
    tensors, sides, ok = [], [], []
    for data in photos:
        try:
            steps = load_and_preprocess(data)
        except ImageError:
            ok.append(False)
            continue
        tensors.append(to_tensor(steps.final))
        sides.append(ink_side(steps))
        ok.append(True)
    if not tensors:
        return None, [], ok
    probs = ensemble_proba(models, torch.stack(tensors))
    return probs, is_digit(probs, threshold, sides).tolist(), ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="*")
    parser.add_argument("--per-cell", type=int, default=30, help="photos per source and condition")
    parser.add_argument("--split", choices=["report", "tune"], default="report")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--numbers", type=int, default=120, help="rows of 2-6 digits")
    parser.add_argument("--plot", type=Path, help="draw the reliability diagram to this PNG")
    parser.add_argument("--save-failures", type=Path, help="write misread photos (and numbers) here")
    parser.add_argument("--without-whole-digit", action="store_true",
                        help="cut touching digits by the digit network alone (to compare)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(format_environment(), flush=True)
    checkpoints = args.checkpoints or [str(pretrained_path())]
    models, classes, threshold = load_predictor(checkpoints)
    seed = args.seed if args.seed is not None else (2026 if args.split == "report" else 7)
    glyphs = Glyphs(args.split, seed)
    sources = SOURCES if args.split == "report" else ("mnist", "pen", "font")
    conditions = args.conditions.split(",")
    if args.save_failures:
        args.save_failures.mkdir(parents=True, exist_ok=True)

    print(f"\n{args.split} split, {args.per_cell} photos per cell; right / accepted and right / "
          "refused as blank")
    print(f"{'source':8s}" + "".join(f"{c:>13s}" for c in conditions))
    all_probs, all_labels, started = [], [], time.perf_counter()
    totals = {"right": 0, "accepted": 0, "blank": 0, "count": 0}
    for source in sources:
        cells = []
        for name in conditions:
            per = max(4, args.per_cell // 3) if name == "large" else args.per_cell
            labels = [int(glyphs.rng.integers(10)) for _ in range(per)]
            photos = [jpeg_bytes(photograph_page(glyphs.digit(source, y), glyphs.rng,
                                                 condition_for(name, glyphs.rng)))
                      for y in labels]
            probs, digits, ok = read_photos(photos, models, threshold)
            right = accepted = 0
            rows = iter(range(len(photos)))
            for i, (label, good) in enumerate(zip(labels, ok)):
                if not good:
                    continue
                row = next(rows)
                p = probs[row]
                all_probs.append(p)
                all_labels.append(label)
                hit = int(p.argmax()) == label
                right += hit
                accepted += hit and digits[row]
                if not hit and args.save_failures:
                    (args.save_failures / f"{source}-{name}-{i}-{label}.jpg").write_bytes(photos[i])
            blank = ok.count(False)
            cells.append(f"{right / per:6.0%}/{accepted / per:4.0%}/{blank:<2d}")
            for key, value in (("right", right), ("accepted", accepted), ("blank", blank),
                               ("count", per)):
                totals[key] += value
        print(f"{source:8s}" + "".join(f"{c:>13s}" for c in cells), flush=True)
    n = totals["count"]
    print(f"\nsingle digits: {totals['right'] / n:.1%} right, {totals['accepted'] / n:.1%} accepted "
          f"and right, {totals['blank']} refused as blank, of {n} "
          f"({time.perf_counter() - started:.0f} s)")

    # letters under one condition at a time ("mixed" too, when it is the only one asked for)
    single = [c for c in conditions if c != "mixed"] or conditions
    letters, kinds = [], []
    for _ in range(args.per_cell * 4):
        ink, kind = glyphs.letter()
        condition = condition_for(str(glyphs.rng.choice(single)), glyphs.rng)
        letters.append(jpeg_bytes(photograph_page(ink, glyphs.rng, condition)))
        kinds.append(kind)
    _, digits, ok = read_photos(letters, models, threshold)
    taken = iter(digits)
    refused = [not good or not next(taken) for good in ok]
    by_kind = {kind: (sum(r for r, k in zip(refused, kinds) if k == kind), kinds.count(kind))
               for kind in ("pen", "font")}
    print(f"letters: {sum(refused) / len(letters):.1%} refused as not a digit (or blank), of "
          f"{len(letters)} (" + ", ".join(f"{k} {r}/{n}" for k, (r, n) in by_kind.items()) + ")")

    exact, by_source = 0, {source: [0, 0] for source in sources}
    for _ in range(args.numbers):
        length = int(glyphs.rng.integers(2, 7))
        source = str(glyphs.rng.choice(sources))
        digits = [int(d) for d in glyphs.rng.integers(0, 10, length)]
        ink = row_ink([glyphs.digit(source, d) for d in digits], glyphs.rng)
        # a whole number under 60 px tall is too small to read by anyone; 12 MP is the digits' test
        name = str(glyphs.rng.choice([c for c in conditions if c not in ("large", "small")]))
        condition = condition_for(name, glyphs.rng)
        condition.digit_share = glyphs.rng.uniform(0.3, 0.7)
        data = jpeg_bytes(photograph_page(ink, glyphs.rng, condition))
        try:
            reading = read_number(load_image(data), models, classes, digit_threshold=threshold,
                                  whole_digit=not args.without_whole_digit)
            got = reading.number
        except ImageError:
            got = "refused"
        truth = "".join(map(str, digits))
        hit = got == truth
        if not hit and args.save_failures:
            (args.save_failures / f"number-{source}-{name}-{truth}-read-{got}.jpg").write_bytes(data)
        exact += hit
        by_source[source][0] += hit
        by_source[source][1] += 1
    if args.numbers:
        print(f"numbers of 2-6 digits: {exact / args.numbers:.1%} read exactly, of {args.numbers} ("
              + ", ".join(f"{source} {hits}/{count}" for source, (hits, count) in by_source.items())
              + ")")

    probs, labels = torch.stack(all_probs), torch.tensor(all_labels)
    print(f"expected calibration error: {calibration_error(probs, labels):.2%} over "
          f"{len(labels)} photos of digits read")
    mnist_test = load_dataset("mnist").test
    test_probs = ensemble_proba(models, mnist_test.images)
    print(f"expected calibration error on MNIST's test digits: "
          f"{calibration_error(test_probs, mnist_test.labels):.2%}")
    if args.plot:
        from mnist_cnn.inference.plots import reliability_diagram, save
        save(reliability_diagram({"photos of digits": (probs, labels),
                                  "MNIST test digits": (test_probs, mnist_test.labels)}),
             args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    sys.exit(main())
