"""Test-time augmentation: does averaging a network's softmax over warped copies of each digit
beat reading it once?

For each checkpoint, the softmax on the validation and test splits for the digit as it is and for
10 fixed warps of it (turned by +-6 degrees, zoomed by +-8%, shifted by one pixel along each axis,
sheared by +-0.12: the inside of the `standard` augmentation's range), then the accuracy of
averaging the plain reading with each family of warps, and with all of them.

Usage: python benchmarks/tta.py CHECKPOINT [CHECKPOINT ...] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from mnist_cnn import load_checkpoint, load_dataset, setup
from mnist_cnn.inference.evaluation import predict_proba
from mnist_cnn.models.registry import as_input
from mnist_cnn.runtime.environment import format_environment
from mnist_cnn.training.augment import affine_matrices

WARPS = {"as is": {}, "turn +": {"angle": 6}, "turn -": {"angle": -6},
         "zoom +": {"scale": 1.08}, "zoom -": {"scale": 0.92},
         "right": {"tx": 1}, "left": {"tx": -1}, "down": {"ty": 1}, "up": {"ty": -1},
         "shear +": {"shear": 0.12}, "shear -": {"shear": -0.12}}
FAMILIES = {"none": ["as is"], "turns": ["as is", "turn +", "turn -"],
            "zooms": ["as is", "zoom +", "zoom -"],
            "shifts": ["as is", "right", "left", "down", "up"],
            "shears": ["as is", "shear +", "shear -"], "all 11": list(WARPS)}


def warp(images: torch.Tensor, angle: float = 0.0, scale: float = 1.0, shear: float = 0.0,
         tx: float = 0.0, ty: float = 0.0) -> torch.Tensor:
    """The same warp applied to every image of a uint8 (n, 1, h, w) batch, as floats in [0, 1]."""
    x = as_input(images)
    full = [torch.full((len(x),), float(v)) for v in (angle, scale, shear, tx, ty)]
    theta = affine_matrices(*full, size=tuple(x.shape[-2:]))
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False).clamp_(0, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--threads", type=int, help="CPU threads (default: follow the load)")
    args = parser.parse_args()
    print(format_environment(), "\n", flush=True)
    runtime = setup("auto", "fp32", args.threads)
    data = load_dataset("mnist")
    print("validation / test accuracy, the plain reading averaged with each family of warps\n")
    print("| checkpoint | " + " | ".join(FAMILIES) + " |")
    print("|---|" + "---|" * len(FAMILIES))
    for path in args.checkpoints:
        model, _ = load_checkpoint(path, device=runtime.device)
        probs = {split: {name: predict_proba(model, warp(getattr(data, split).images, **w),
                                             runtime=runtime)
                         for name, w in WARPS.items()} for split in ("val", "test")}
        cells = []
        for family in FAMILIES.values():
            accuracy = [float((sum(probs[split][name] for name in family).argmax(1)
                               == getattr(data, split).labels).float().mean())
                        for split in ("val", "test")]
            cells.append(f"{accuracy[0]:.2%} / {accuracy[1]:.2%}")
        print(f"| {path} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
