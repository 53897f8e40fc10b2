"""Inference speed on this machine's CPU: PyTorch against ONNX Runtime, for each network.

Run: .venv/bin/python benchmarks/inference.py [--threads N]
For each of simple, deep and fast (random weights: speed does not depend on them) it measures
  - throughput: images/s over the 10,000 test images in batches of 1,000 (random images if MNIST
    is not found: the speed is the same);
  - single-image latency, p50 and p99 over 200 calls, from a ready 28x28 uint8 tensor;
  - the same with preprocessing: from the PNG bytes of a synthetic photo, through
    imaging.load_and_preprocess.
Both engines get the same threads (mnist_cnn.runtime.device.setup's choice unless --threads) and return
softmax probabilities. Takes about a minute; numbers from a machine shared with other jobs vary.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from PIL import Image, ImageDraw, ImageFilter

from mnist_cnn.data.dataset import load_dataset
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.images.preprocess import load_and_preprocess, to_tensor
from mnist_cnn.inference.evaluation import predict_proba
from mnist_cnn.inference.export import export_onnx, onnx_proba, onnx_session
from mnist_cnn.models.registry import build_model
from mnist_cnn.runtime.device import setup
from mnist_cnn.runtime.environment import format_environment

MODELS = ("simple", "deep", "fast")
BATCH = 1000
CALLS = 200
WARMUP = 10


def test_images() -> torch.Tensor:
    try:
        return load_dataset("mnist", download=False).test.images
    except MnistCnnError:
        return torch.randint(0, 256, (10_000, 1, 28, 28), dtype=torch.uint8)


def photo_png(size: int = 240) -> bytes:
    """A hand-drawn-looking 4 in blue ink on cream paper, with noise: a phone photo's bytes."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    s = size / 240
    draw.line([(150 * s, 40 * s), (60 * s, 150 * s), (180 * s, 150 * s)], fill=255,
              width=round(14 * s), joint="curve")
    draw.line([(145 * s, 80 * s), (140 * s, 210 * s)], fill=255, width=round(14 * s))
    alpha = np.asarray(mask.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float64)[..., None] / 255
    rgb = np.array([245, 235, 210]) * (1 - alpha) + np.array([30, 40, 150]) * alpha
    rgb += np.random.default_rng(0).normal(0, 5, rgb.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def throughput(predict: Callable[[torch.Tensor], object], images: torch.Tensor) -> float:
    predict(images[:BATCH])  # warm-up: first calls pick kernels and allocate
    start = time.perf_counter()
    predict(images)
    return len(images) / (time.perf_counter() - start)


def latency_ms(call: Callable[[], object]) -> tuple[float, float]:
    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(CALLS):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    p50, p99 = np.percentile(times, [50, 99]) * 1000
    return float(p50), float(p99)


def measure(predict: Callable[[torch.Tensor], object], images: torch.Tensor,
            png: bytes) -> tuple[float, tuple[float, float], tuple[float, float]]:
    one = images[:1]
    return (throughput(predict, images),
            latency_ms(lambda: predict(one)),
            latency_ms(lambda: predict(to_tensor(load_and_preprocess(png).final).unsqueeze(0))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="CPU threads (default: setup's choice)")
    args = parser.parse_args()
    print(format_environment(), "\n", flush=True)
    runtime = setup("cpu", threads=args.threads)
    images, png = test_images(), photo_png()
    print(f"CPU inference, {torch.get_num_threads()} thread(s); torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}; {len(images):,} images in batches of {BATCH}, "
          f"latency over {CALLS} single-image calls")
    print(f"{'model':<7} {'engine':<12} {'images/s':>10}   {'latency p50 / p99 (ms)':>22}   "
          f"{'with preprocessing p50 / p99 (ms)':>33}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            model = build_model(name).eval()
            session = onnx_session(export_onnx(model, Path(tmp) / f"{name}.onnx"))
            engines = {
                "pytorch": lambda x, m=model: predict_proba(m, x, BATCH, runtime),
                "onnxruntime": lambda x, s=session: onnx_proba(s, x, BATCH),
            }
            for engine, predict in engines.items():
                rate, (p50, p99), (pre50, pre99) = measure(predict, images, png)
                print(f"{name:<7} {engine:<12} {rate:>10,.0f}   {p50:>10.3f} / {p99:<9.3f}   "
                      f"{pre50:>19.3f} / {pre99:<9.3f}", flush=True)


if __name__ == "__main__":
    main()
