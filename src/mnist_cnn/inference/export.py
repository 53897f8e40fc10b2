"""A trained network as an ONNX file for serving, plus a JSON sidecar that says how to feed it.

The exported graph is the network followed by a softmax: input "image", float32 (batch, 1, 28, 28)
in [0, 1], white ink on black, in the MNIST convention of imaging.py; output "probabilities",
(batch, classes), each row summing to 1. Serving code therefore needs no softmax of its own, and
the batch dimension is free.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..data.dataset import Split
from ..errors import MnistCnnError
from ..files import write_atomically
from ..images import preprocess as imaging
from ..models.checkpoint import CheckpointMeta
from ..models.registry import as_input
from .evaluation import predict_proba

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
OPSET = 17
PARITY_TOLERANCE = 1e-4  # largest |difference| of probabilities accepted between ORT and PyTorch


class _ExportOptions(TypedDict):
    """The keywords both of torch's ONNX exporters are called with."""

    input_names: list[str]
    output_names: list[str]
    opset_version: int
    dynamic_axes: dict[str, dict[int, str]]


class WithSoftmax(nn.Module):
    """The network plus a softmax, so that the served outputs are probabilities, not logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def onnx_bytes(model: nn.Module, opset: int = OPSET) -> bytes:
    """The ONNX serialisation of `model` + softmax, in eval mode (dropout off, BatchNorm frozen)."""
    # a copy on the CPU in the default layout: the caller's model keeps its device and mode
    wrapped = WithSoftmax(copy.deepcopy(model)).cpu().float().eval()
    # (torch's stub of Module.to lacks the memory_format keyword that the method accepts)
    wrapped.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # stub lacks it
    example = torch.zeros(1, 1, imaging.FIELD, imaging.FIELD)
    options = _ExportOptions(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                             opset_version=opset,
                             dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    buffer = io.BytesIO()
    # (torch's annotation of export's `f` names only paths; both exporters also write to a BytesIO)
    try:
        # The TorchScript exporter needs nothing beyond torch; since torch 2.9 it is deprecated
        # and no longer the default, so ask for it and keep its deprecation notice quiet
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(wrapped, (example,), buffer,  # type: ignore[arg-type]  # f: a BytesIO
                              dynamo=False, **options)
    except Exception as legacy_error:  # e.g. a torch that has dropped the old exporter
        if importlib.util.find_spec("onnxscript") is None:
            raise MnistCnnError(
                f"cannot export to ONNX: torch {torch.__version__}'s TorchScript exporter failed "
                f"({legacy_error}), and its newer exporter needs the onnxscript package: "
                "pip install onnxscript") from legacy_error
        buffer = io.BytesIO()
        torch.onnx.export(wrapped, (example,), buffer,  # type: ignore[arg-type]  # f: a BytesIO
                          dynamo=True, **options)
    return buffer.getvalue()


def export_onnx(model: nn.Module, path: str | os.PathLike, opset: int = OPSET) -> Path:
    """Write `model` + softmax to `path` atomically: an existing file is replaced whole or kept."""
    path = Path(path)
    write_atomically(path, onnx_bytes(model, opset))
    return path


def export_checkpoint(model: nn.Module, meta: CheckpointMeta, checkpoint: str | os.PathLike,
                      path: str | os.PathLike, opset: int = OPSET, check: Split | None = None,
                      log: Callable[[str], None] = print) -> Path:
    """A trained checkpoint's network as `path` (ONNX, + softmax) and its JSON sidecar.

    With `check` (the test split), ONNX Runtime and PyTorch are first compared on all of it; if
    they disagree nothing is written, so a bad export never replaces a good file, and the
    sidecar records the exported model's own test accuracy. Returns the sidecar's path.
    """
    onnx_model = onnx_bytes(model, opset)
    accuracy = None
    if check is not None:
        parity = check_parity(model, onnx_model, check.images, check.labels)
        log(format_parity(parity))
        if not parity["ok"]:
            raise MnistCnnError(f"the ONNX model disagrees with PyTorch (needed: the same class "
                                f"everywhere, max |Δp| < {PARITY_TOLERANCE:g}); {path} not written")
        accuracy = parity["accuracy"]
    write_atomically(path, onnx_model)
    return write_sidecar(path, describe(meta, checkpoint, opset, accuracy))


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".json")


def describe(meta: CheckpointMeta, checkpoint: str | os.PathLike, opset: int = OPSET,
             test_accuracy: float | None = None) -> dict[str, Any]:
    """What a server needs to know to feed the ONNX model exactly as the network was trained.

    `test_accuracy` is the exported model's own accuracy on the test set, when the caller has
    measured it (the command does, during its parity check); otherwise null.
    """
    classes = list(meta.class_names())
    return {
        "format": "mnist-cnn-onnx",
        "model": meta.recipe.model,
        "source_checkpoint": str(checkpoint),
        "dataset": meta.dataset,
        "epoch": meta.epoch,
        "classes": classes,
        "test_accuracy": test_accuracy,
        "validation_accuracy": meta.metrics.get("val_accuracy"),
        "opset": opset,
        "exported_by": f"mnist-cnn {__version__}, torch {torch.__version__}",
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 1, imaging.FIELD, imaging.FIELD],
            "layout": "NCHW",
            "dtype": "float32",
            "range": [0.0, 1.0],
            "scaling": "uint8 gray level / 255",
            "polarity": "white ink (1.0) on a black background (0.0)",
        },
        "preprocessing": {
            "field": [imaging.FIELD, imaging.FIELD],
            "ink_box_longer_side": imaging.BOX,
            "centre_of_mass": [imaging.MNIST_CENTRE, imaging.MNIST_CENTRE],
            "convention": (
                "MNIST: invert dark-on-light photos, suppress the background, crop to the ink, "
                f"resize (aspect kept, anti-aliased) so the longer side is {imaging.BOX} px, then "
                f"paste into a {imaging.FIELD}x{imaging.FIELD} field shifted by whole pixels so the "
                f"ink's centre of mass is at (row, column) = ({imaging.MNIST_CENTRE}, "
                f"{imaging.MNIST_CENTRE}), pixel centres at integer indices; "
                "mnist_cnn.images.preprocess.load_and_preprocess does all of this"),
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", len(classes)],
            "meaning": "softmax probabilities, one per class in the order of `classes`",
        },
    }


def write_sidecar(onnx_path: str | os.PathLike, description: dict[str, Any]) -> Path:
    path = sidecar_path(onnx_path)
    write_atomically(path, (json.dumps(description, indent=2) + "\n").encode())
    return path


def onnx_session(source: str | os.PathLike | bytes, threads: int | None = None):
    """An onnxruntime CPU session for a file or serialised model; threads default to torch's."""
    import onnxruntime as ort  # only exporting and serving need it

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only
    model = source if isinstance(source, bytes) else str(source)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def onnx_proba(session, images: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Probabilities from an ONNX session for uint8 (N, 1, 28, 28) images, in batches."""
    # as_input is the very conversion PyTorch gets, so both see bit-identical inputs
    return np.concatenate([
        session.run([OUTPUT_NAME], {INPUT_NAME: as_input(images[i:i + batch_size]).numpy()})[0]
        for i in range(0, len(images), batch_size)])


def check_parity(model: nn.Module, onnx_model: str | os.PathLike | bytes, images: torch.Tensor,
                 labels: torch.Tensor | None = None, batch_size: int = 1000) -> dict[str, Any]:
    """Run ONNX Runtime and PyTorch over the same uint8 images and compare them.

    Returns count, same_class (images whose argmax agrees), max_abs_diff (of probabilities) and
    ok; with labels also the ONNX model's accuracy.
    """
    expected = predict_proba(model, images, batch_size).numpy()
    got = onnx_proba(onnx_session(onnx_model), images, batch_size)
    same = int((expected.argmax(1) == got.argmax(1)).sum())
    max_diff = float(np.abs(expected - got).max()) if len(images) else 0.0
    result = {"count": len(images), "same_class": same, "max_abs_diff": max_diff,
              "ok": same == len(images) and max_diff < PARITY_TOLERANCE}
    if labels is not None:
        result["accuracy"] = float((got.argmax(1) == labels.numpy()).mean())
    return result


def format_parity(result: dict[str, Any]) -> str:
    return (f"parity: {result['same_class']}/{result['count']} same class, "
            f"max |Δp| = {result['max_abs_diff']:.1e}")
