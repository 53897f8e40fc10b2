"""Rebuild the number reader's whole-digit check (src/mnist_cnn/pretrained/whole-digit.safetensors).

The check is the `fast` network with two outputs, "not one whole digit" and "one whole digit",
trained on the parts that the number reader weighs when it cuts a row of touching digits
(mnist_cnn.training.parts): rows of MNIST training digits, pen-stroke digits and digits of the
last third of the fonts (those no report or calibration uses), photographed on notebook pages.
It is validated on rows of the tuning split's digits (MNIST validation, pen, the first third of the
fonts: benchmarks/photos.py's Glyphs("tune")). Parts are made once and cached in runs/; a fixed
recipe and seed, so anyone can rebuild it. It prints the file's SHA-256, to pin as
WHOLE_DIGIT_SHA256 in src/mnist_cnn/models/checkpoint.py.

Usage: .venv/bin/python benchmarks/build_whole_digit.py [--rows 12000]
MNIST comes from $MNIST_DATA_DIR, the cache or a download, as for every command.
"""

from __future__ import annotations

import argparse
import hashlib
import io
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import photos
import torch
from photos import Glyphs

from mnist_cnn import build_model, evaluate, load_dataset, recipe_for, setup, train
from mnist_cnn.data.dataset import Dataset, Split
from mnist_cnn.files import write_atomically
from mnist_cnn.images import notebook, pen, preprocess, synthetic
from mnist_cnn.images.notebook import mnist_glyph
from mnist_cnn.inference import numbers
from mnist_cnn.inference.numbers import WHOLE_DIGIT_CLASSES
from mnist_cnn.models.checkpoint import WHOLE_DIGIT, save_checkpoint
from mnist_cnn.runtime.environment import format_environment
from mnist_cnn.training import parts
from mnist_cnn.training.parts import part_fields

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "mnist_cnn" / WHOLE_DIGIT
VAL_ROWS, SEED = 400, 0
# the modules whose code makes the parts: the rows' glyphs and photos, the reader's cuts
MAKERS = (parts, numbers, preprocess, notebook, synthetic, pen, photos)


class TrainingGlyphs:
    """Digits no report or calibration draws: MNIST's training split, pen strokes, and the last
    third of the fonts (as the shipped digit network's "not a digit" letters)."""

    def __init__(self) -> None:
        train = load_dataset("mnist").train
        self.images, self.labels = train.images[:, 0].numpy(), train.labels.numpy()
        self.fonts = synthetic.font_paths()[2::3]

    def __call__(self, digit: int, rng: np.random.Generator) -> np.ndarray:
        source = rng.choice(3, p=[0.5, 0.25, 0.25])
        if source == 0:
            return mnist_glyph(self.images[rng.choice(np.flatnonzero(self.labels == digit))])
        if source == 1:
            return pen.draw(str(digit), rng)
        font = self.fonts[rng.integers(len(self.fonts))]
        return synthetic.written_glyph(str(digit), font, rng)


def make(split: str, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if split == "train":
        return part_fields(TrainingGlyphs(), rows, seed)
    glyphs = Glyphs("tune", seed)

    def tuning_glyph(digit: int, rng: np.random.Generator) -> np.ndarray:
        glyphs.rng = rng
        return glyphs.digit(str(rng.choice(["mnist", "pen", "font"])), digit)

    return part_fields(tuning_glyph, rows, seed)


def parts_of(split: str, rows: int, seed: int) -> Split:
    """The labelled parts of `rows` rows (two processes), cached: making them takes minutes."""
    # named by the code that makes them too: parts made by earlier code are made again
    recipe = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in MAKERS)).hexdigest()[:8]
    cache = Path(f"runs/whole-digit-{split}-{rows}-{seed}-{recipe}.npz")
    if not cache.is_file():
        with ProcessPoolExecutor(2) as pool:
            made = list(pool.map(make, [split] * 2, [rows // 2, rows - rows // 2],
                                 [seed, seed + 1]))
        buffer = io.BytesIO()  # written whole or not at all: an interrupted build makes it again
        np.savez(buffer, fields=np.concatenate([f for f, _ in made]),
                 labels=np.concatenate([y for _, y in made]))
        write_atomically(cache, buffer.getvalue())
    saved = np.load(cache)
    return Split(torch.from_numpy(saved["fields"])[:, None], torch.from_numpy(saved["labels"]))


def main() -> None:
    parser = argparse.ArgumentParser(description="rebuild the shipped whole-digit check")
    parser.add_argument("--rows", type=int, default=12000, help="photographed rows to train on")
    args = parser.parse_args()
    print(format_environment(), "\n", flush=True)
    train_parts = parts_of("train", args.rows, SEED + 1)
    val_parts = parts_of("tune", VAL_ROWS, SEED + 11)
    for name, made in (("training", train_parts), ("validation", val_parts)):
        print(f"{len(made):,} {name} parts, {float(made.labels.float().mean()):.1%} of them "
              "one whole digit", flush=True)
    recipe = recipe_for("fast").replace(
        epochs=5, seed=0, label_smoothing=0.0, precision="fp32",
        model_args={**recipe_for("fast").model_args, "outputs": 2})
    data = Dataset("whole-digit parts", train_parts, val_parts, val_parts, WHOLE_DIGIT_CLASSES)
    runtime = setup("auto", recipe.precision, tune_allocator=True)
    result = train(build_model(recipe), data, recipe, runtime, progress=False)
    model = result.model.eval()
    accuracy = evaluate(model, val_parts).accuracy
    print(f"validation accuracy {accuracy:.4f} on {len(val_parts):,} parts; trained in "
          f"{result.train_seconds:.0f} s")
    save_checkpoint(SHIPPED, model, {
        "recipe": recipe.to_dict(), "classes": list(WHOLE_DIGIT_CLASSES),
        "train_size": len(train_parts), "epoch": recipe.epochs,
        "metrics": {"val_accuracy": accuracy}, "history": result.history})
    print(f"wrote {SHIPPED} ({SHIPPED.stat().st_size / 2**10:.0f} KiB)")
    digest = hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    print(f'pin it in src/mnist_cnn/models/checkpoint.py: WHOLE_DIGIT_SHA256 = "{digest}"')


if __name__ == "__main__":
    main()
