"""Photos of digits -> predictions, with one network or an ensemble of several.

Every image is preprocessed into the MNIST convention (imaging.py), the good ones are stacked into
one batch for the networks, and a file that cannot be read becomes a `Failure` in its place rather
than stopping the others.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..errors import MnistCnnError
from ..files import write_atomically
from ..images.preprocess import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    WORK_PIXELS,
    ImageError,
    Preprocessed,
    collect_images,
    load_and_preprocess,
    load_image,
    png_bytes,
    shrink_factor,
    source_name,
    to_tensor,
)
from ..models.checkpoint import CheckpointMeta, pretrained_path, run_checkpoint
from ..runtime.device import Runtime
from .ensemble import ensemble_proba, load_members
from .evaluation import CPU, ranked
from .novelty import ensemble_threshold, is_digit

if TYPE_CHECKING:
    from .numbers import NumberReading

CHECKPOINT_SUFFIX = ".safetensors"


@dataclass
class Prediction:
    file: str
    digit: str  # the class name (for MNIST the digit itself)
    index: int  # the class index
    probability: float
    top_k: list[dict]  # [{"class": name, "probability": p}, ...], most likely first
    inverted: bool  # True when the photo was dark ink on light paper
    is_digit: bool = True  # False: it looks like no digit (`digit` is then only the closest)


@dataclass
class NumberPrediction:
    file: str
    number: str  # the digits read, left to right
    digits: list[dict]  # per digit: {"digit", "index", "probability", "is_digit", "box", "top_k"}
    inverted: bool
    is_digit: bool = True  # False when some piece looks like no digit


@dataclass
class Failure:
    file: str
    error: str  # why, without the file name


def names_checkpoint(argument: str) -> bool:
    """Whether a positional argument is a checkpoint: a .safetensors file, or a training run's
    folder, which stands for the checkpoint kept in it."""
    return argument.lower().endswith(CHECKPOINT_SUFFIX) or run_checkpoint(argument) is not None


def split_arguments(arguments: Sequence[str]) -> tuple[list[str], list[str]]:
    """Positional arguments -> (checkpoints, images or folders of images); with no checkpoint,
    the one shipped with mnist-cnn."""
    checkpoint = [names_checkpoint(a) for a in arguments]  # one look at each path
    checkpoints = [a for a, c in zip(arguments, checkpoint) if c]
    images = [a for a, c in zip(arguments, checkpoint) if not c]
    if not checkpoints:  # the network shipped with mnist-cnn answers
        checkpoints = [str(pretrained_path())]
    if not images:
        raise MnistCnnError("no images given: name image files or folders after the checkpoints")
    return checkpoints, images


@dataclass
class Predictor:
    """The network(s) that read images (one, or an ensemble with the same classes), their class
    names, the threshold below which an image is "not a digit" (None: never) and the runtime
    they run on: what `mnist-cnn predict` and the server both read with."""

    models: list[nn.Module]
    classes: tuple[str, ...]
    threshold: float | None
    metas: list[CheckpointMeta]
    runtime: Runtime = CPU

    @classmethod
    def load(cls, checkpoints: Sequence[str | os.PathLike], runtime: Runtime = CPU) -> Predictor:
        members = load_members(checkpoints, runtime.device)
        metas = [meta for _, meta in members]
        return cls([model for model, _ in members], class_names(metas[0]),
                   ensemble_threshold([meta.digit_threshold for meta in metas]), metas, runtime)

    def proba(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Averaged class probabilities (N, classes) of uint8 28x28 images (N, 1, 28, 28)."""
        return ensemble_proba(self.models, images, batch_size, self.runtime)

    def answer(self, probabilities: torch.Tensor, top_k: int, ink_side: int | None = None
               ) -> dict:
        return answer(probabilities, self.classes, top_k, self.threshold, ink_side)

    def read_digit(self, source: str | os.PathLike | bytes, max_pixels: int = MAX_PIXELS,
                   name: str | None = None, work_pixels: int = WORK_PIXELS
                   ) -> tuple[dict, torch.Tensor, Preprocessed]:
        """One image of one digit: its answer (all classes ranked), probabilities and steps."""
        steps = load_and_preprocess(source, max_pixels, name, work_pixels)
        probabilities = self.proba(to_tensor(steps.final)[None])[0]
        return (self.answer(probabilities, len(self.classes), ink_side(steps)), probabilities,
                steps)

    def read_number(self, source: str | os.PathLike | bytes, top_k: int,
                    max_pixels: int = MAX_PIXELS, name: str | None = None,
                    work_pixels: int = WORK_PIXELS) -> NumberReading:
        """One image of a row of digits, shrunk as the server shrinks it; boxes in its pixels."""
        from .numbers import read_number  # scipy.ndimage: imported by numbers alone (start-up)

        name = name or source_name(source)
        image = load_image(source, max_pixels, name, work_pixels)
        return read_number(image, self.models, self.classes, self.runtime, top_k, name,
                           shrink_factor(source, image),
                           digit_threshold=self.threshold)


def load_predictor(checkpoints: Sequence[str | os.PathLike], device: torch.device | str = "cpu"
                   ) -> tuple[list[nn.Module], tuple[str, ...], float | None]:
    """The networks (one, or an ensemble with the same classes), their class names, and the
    threshold below which an image is "not a digit" (None: never)."""
    predictor = Predictor.load(checkpoints, Runtime(torch.device(device)))
    return predictor.models, predictor.classes, predictor.threshold


def class_names(meta: CheckpointMeta) -> tuple[str, ...]:
    return meta.class_names()


def image_files(paths: Sequence[str | os.PathLike], top_k: int) -> list[Path]:
    """The images named (folders expanded), checked before any is read."""
    if top_k < 1:
        raise MnistCnnError(f"top-k must be at least 1, not {top_k}")
    files = collect_images(list(paths))
    if not files:
        raise MnistCnnError("no images found (folders are searched for files ending in "
                            f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def predict_images(predictor: Predictor, paths: Sequence[str | os.PathLike], top_k: int,
                   save_dir: str | os.PathLike | None = None, batch_size: int = 1000
                   ) -> list[Prediction | Failure]:
    """One result per image (folders expanded), in order; unreadable images become Failures.
    Below the predictor's threshold (novelty.is_digit) a Prediction says it is not a digit."""
    files = image_files(paths, top_k)
    results: list[Prediction | Failure | None] = [None] * len(files)
    good: list[int] = []
    tensors: list[torch.Tensor] = []
    inverted: list[bool] = []
    ink_sides: list[int] = []
    saved_names: set[str] = set()
    for i, path in enumerate(files):
        try:
            pre = load_and_preprocess(path)
        except ImageError as e:
            results[i] = failure(path, e)
            continue
        # keep only the 28x28 result: the full-size steps of many large photos would add up
        good.append(i)
        tensors.append(to_tensor(pre.final))
        inverted.append(pre.inverted)
        ink_sides.append(ink_side(pre))
        if save_dir is not None:
            save_png(pre.final, Path(save_dir) / unique_name(path, saved_names))

    if good:
        probs = predictor.proba(torch.stack(tensors), batch_size)
        for row, i in enumerate(good):
            results[i] = Prediction(display_name(files[i]), inverted=inverted[row],
                                    **predictor.answer(probs[row], top_k, ink_sides[row]))
    return [r for r in results if r is not None]


def ink_side(steps: Preprocessed) -> int:
    """The longer side of the digit's ink, in pixels of the picture as read (novelty.is_digit)."""
    return max(steps.cropped.shape)


def answer(probabilities: torch.Tensor, classes: Sequence[str], top_k: int,
           digit_threshold: float | None, ink_side: int | None = None) -> dict:
    """One image's class probabilities as predict and the server answer them: the likeliest
    class (its name and index), how sure, the top k, and whether it is a digit at all (its ink's
    longer side, when known, asks more of small ink: novelty.is_digit)."""
    top = ranked(probabilities, classes, top_k)
    return {"digit": top[0]["class"], "index": classes.index(top[0]["class"]),
            "probability": top[0]["probability"], "top_k": top,
            "is_digit": bool(is_digit(probabilities, digit_threshold, ink_side))}


def predict_numbers(predictor: Predictor, paths: Sequence[str | os.PathLike], top_k: int
                    ) -> list[NumberPrediction | Failure]:
    """Each image read as a row of digits (numbers.py), in order; unreadable ones as Failures."""
    files = image_files(paths, top_k)
    results: list[NumberPrediction | Failure] = []
    for path in files:
        try:
            reading = predictor.read_number(path, top_k)
        except ImageError as e:
            results.append(failure(path, e))
            continue
        results.append(NumberPrediction(display_name(path), reading.number, reading.digits,
                                        reading.inverted, reading.is_digit))
    return results


def failure(path: Path, error: ImageError) -> Failure:
    # ImageError messages start with the file name; the caller prints it once
    return Failure(display_name(path), str(error).removeprefix(f"{path}: "))


def display_name(path: str | os.PathLike) -> str:
    """The path as printable UTF-8 text: bytes that are not UTF-8 (which Python keeps as lone
    surrogates, invalid in JSON and unprintable) are shown as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def unique_name(source: Path, used: set[str]) -> str:
    """`photo.jpg` -> `photo.png`; a second `photo.*` in the same run gets `photo-2.png`."""
    name, n = f"{source.stem}.png", 1
    while name in used:
        n += 1
        name = f"{source.stem}-{n}.png"
    used.add(name)
    return name


def save_png(final: np.ndarray, path: Path) -> None:
    try:
        write_atomically(path, png_bytes(final))
    except OSError as e:
        raise MnistCnnError(f"{path}: cannot write the preprocessed image ({e.strerror})") from None


def format_result(result: Prediction | NumberPrediction | Failure) -> str:
    """`photo.png: 7 (98.2%)  alternatives: 1 (1.1%), 9 (0.4%)`, `photo.png: not a digit (closest:
    4, 31.0%)  alternatives: ...`, or `photo.txt: error: ...`; a number: `row.png: 307  (3 99.1%,
    0 97.0%, 7 99.8%)`, a piece that looks like no digit marked `(not a digit)`."""
    if isinstance(result, Failure):
        return f"{result.file}: error: {result.error}"
    if isinstance(result, NumberPrediction):
        each = ", ".join(f"{d['digit']} {d['probability']:.1%}"
                         + ("" if d["is_digit"] else " (not a digit)") for d in result.digits)
        return f"{result.file}: {result.number}  ({each})"
    if result.is_digit:
        line = f"{result.file}: {result.digit} ({result.probability:.1%})"
    else:
        line = f"{result.file}: not a digit (closest: {result.digit}, {result.probability:.1%})"
    alternatives = ", ".join(f"{t['class']} ({t['probability']:.1%})" for t in result.top_k[1:])
    return f"{line}  alternatives: {alternatives}" if alternatives else line


def as_json(results: Sequence[Prediction | NumberPrediction | Failure]) -> list[dict]:
    return [asdict(r) for r in results]
