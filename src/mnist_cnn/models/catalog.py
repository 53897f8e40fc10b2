"""What the command line tells about the networks without importing torch (which takes seconds
on a small CPU): each network's name, a line on what it is, its size and its measured accuracy.

The family modules beside it (lecture.py, fast.py, best.py, views.py) build and register the
networks under these names; tests/test_models.py checks that the two agree. The accuracies are
those in docs/measurements.md (AMD EPYC, 2 cores).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Network:
    description: str
    parameters: int
    accuracy: str  # test accuracy with the network's default recipe, as measured


NETWORKS: dict[str, Network] = {
    "simple": Network("the lecture's simple CNN: 2 conv blocks (32, 64), dense 10",
                      50_090, "98.77% (mean of 12 runs; the lecture: 98.85%)"),
    "deep": Network("the lecture's deep CNN: 3 conv blocks (32, 64, 128), dense 625, dropout 0.3",
                    1_379_333, "99.32% (mean of 6 runs; the lecture: 99.38%)"),
    "fast": Network("a small batch-normalised CNN that reaches 99% in one epoch (seconds on a CPU)",
                    31_498, "99.17% (mean of 20 seeds)"),
    "best": Network("a VGG-style batch-normalised CNN with augmentation",
                    298_090, "99.72% (mean of 3 seeds)"),
    "wide": Network("`best` with 1.5x the channels (48, 96, 192), for ensembles",
                    654_490, "99.73% (1 run)"),
    "upright": Network("`best` on deskewed input (each digit's slant undone from its moments), "
                       "for ensembles", 298_090, "99.70% (mean of 3 seeds)"),
    "widthnorm": Network("`best` on width-normalised input (each digit stretched to 16 pixels "
                         "wide), for ensembles", 298_090, "99.67% (mean of 3 seeds)"),
    "views": Network("`best` reading each digit as written, deskewed and width-normalised "
                     "(3 channels)", 298_666, "99.66% (1 run)"),
    "upright-widthnorm": Network("`best` on deskewed, then width-normalised input, for ensembles",
                                 298_090, "99.72% (1 run)"),
    "five": Network("another topology for ensembles: 5x5 kernels, two pools, a dense hidden "
                    "layer of 256", 887_978, "not measured at its recipe"),
}

# augment.PRESETS' names, for the command line's choices (augment.py imports torch)
AUGMENT_PRESETS: tuple[str, ...] = ("none", "light", "standard", "elastic")
