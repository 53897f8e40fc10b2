"""Rebuild the model shipped inside the package (src/mnist_cnn/pretrained/mnist-best.safetensors).

A fixed recipe and seed, so that anyone can rebuild it: the `best` network's own recipe, seed 0,
trained on MNIST's 55,000 training images (checkpoints in runs/pretrained-best; an interrupted
build continues where it stopped). The shipped file keeps the weights, the recipe, the data
checksums and the training history, and adds the test accuracy measured here in fp32, which
tests/test_pretrained.py checks again; the optimizer and RNG state (only needed to resume) stay
behind.

Then "not a digit" (novelty.py): one more epoch from those weights with outlier exposure
(synthetic non-digits pushed towards a uniform answer; runs/pretrained-best-oe), and the
threshold on the network's confidence that accepts 99% of the calibration digits
(benchmarks/not_a_digit.py builds them: MNIST validation digits and font digits, photographed),
stored as the checkpoint's digit_threshold. Last, it prints the file's SHA-256, to pin as
PRETRAINED_SHA256 in src/mnist_cnn/checkpoint.py.

Usage: MNIST_DATA_DIR=../shared/data/mnist python benchmarks/build_pretrained.py
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from not_a_digit import DIGITS, build_sets, load_fashion

from mnist_cnn import build_model, evaluate, load_dataset, recipe_for, setup, train
from mnist_cnn.checkpoint import PRETRAINED, load_checkpoint, save_checkpoint
from mnist_cnn.device import format_environment
from mnist_cnn.evaluation import predict_proba
from mnist_cnn.novelty import calibrate_threshold, confidence
from mnist_cnn.training import CHECKPOINT_NAME

RUN = Path("runs/pretrained-best")
RUN_OE = Path("runs/pretrained-best-oe")
ACCEPT = 0.99  # the share of calibration digits the threshold accepts
SHIPPED = Path(__file__).resolve().parents[1] / "src" / "mnist_cnn" / PRETRAINED


def main() -> None:
    print(format_environment(), "\n", flush=True)
    data = load_dataset("mnist")
    recipe = recipe_for("best").replace(seed=0)
    runtime = setup("auto", recipe.precision, tune_allocator=True)
    train(build_model(recipe), data, recipe, runtime, RUN, resume=(RUN / CHECKPOINT_NAME).is_file(),
          progress=False)
    model, _ = load_checkpoint(RUN / CHECKPOINT_NAME)
    exposed = recipe.replace(epochs=1, lr=3e-4, schedule="cosine", outlier_exposure=0.5)
    train(model, data, exposed, runtime, RUN_OE, resume=(RUN_OE / CHECKPOINT_NAME).is_file(),
          progress=False)
    model, meta = load_checkpoint(RUN_OE / CHECKPOINT_NAME)
    calibration = build_sets("calibration", data.val, load_fashion("calibration"))
    scores = torch.cat([confidence(predict_proba(model, calibration[name][0]))
                        for name in DIGITS])
    threshold = calibrate_threshold(scores.numpy(), ACCEPT)
    print(f"digit threshold {threshold:.4f}: accepts {ACCEPT:.0%} of {len(scores)} "
          "calibration digits")
    test = evaluate(model, data.test)  # fp32, as predict and serve run it
    print(f"test accuracy {test.accuracy:.4f} on {test.count} images")
    shipped = meta.to_dict()
    shipped.pop("optimizer", None)
    shipped["metrics"] = {**shipped["metrics"], "test_accuracy": test.accuracy}
    shipped["digit_threshold"] = threshold
    save_checkpoint(SHIPPED, model, shipped)
    print(f"wrote {SHIPPED} ({SHIPPED.stat().st_size / 2**20:.1f} MiB)")
    # mnist-cnn refuses a shipped file whose hash is not the pinned one
    digest = hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    print(f'pin it in src/mnist_cnn/checkpoint.py: PRETRAINED_SHA256 = "{digest}"')


if __name__ == "__main__":
    main()
