"""Training and evaluation throughput (images/s) and peak memory of each network on this machine.

Each configuration runs in its own process (so peak memory and allocator settings stay separate):
  mnist-cnn      the library's own training loop (`train`), fp32 and bf16 autocast
  plain PyTorch  the straightforward version: NCHW, nn.Dropout, ReLU before pooling, unfused Adam,
                 default allocator -- the baseline the issue measured at ~4,000 / ~1,500 images/s

Usage: python benchmarks/throughput.py [--models simple,deep,fast] [--epochs 0.2]
Compare ratios within one run: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from mnist_cnn import build_model, evaluate, load_dataset, recipe_for, setup, train
from mnist_cnn.models.registry import as_input
from mnist_cnn.runtime.environment import format_environment


def plain_network(name: str) -> nn.Module:
    """The lecture's networks written the obvious way (for the baseline only)."""
    def block(c_in, c_out, p):
        layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.ReLU(),
                  nn.MaxPool2d(2, 2, ceil_mode=True)]
        return layers + ([nn.Dropout(p)] if p else [])
    if name == "simple":
        return nn.Sequential(*block(1, 32, 0), *block(32, 64, 0), nn.Flatten(), nn.Linear(3136, 10))
    return nn.Sequential(*block(1, 32, 0.3), *block(32, 64, 0.3), *block(64, 128, 0.3), nn.Flatten(),
                         nn.Linear(2048, 625), nn.ReLU(), nn.Dropout(0.3), nn.Linear(625, 10))


def plain_train(name: str, images: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    torch.manual_seed(0)
    model = plain_network(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    perm = torch.randperm(len(labels))
    started = time.perf_counter()
    for i in range(steps):
        idx = perm[i * 100:(i + 1) * 100]
        loss = F.cross_entropy(model(as_input(images[idx])), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * 100 / (time.perf_counter() - started)


def worker(name: str, variant: str, epochs: float) -> dict:
    data = load_dataset("mnist")
    if variant == "plain":
        torch.set_num_threads(os.cpu_count() or 1)
        steps = int(epochs * len(data.train) / 100)
        plain_train(name, data.train.images, data.train.labels, 10)  # warm-up
        train_ips = plain_train(name, data.train.images, data.train.labels, steps)
        model, runtime = plain_network(name).eval(), None
    else:
        precision = variant
        runtime = setup("cpu", precision, tune_allocator=True)
        recipe = recipe_for(name).replace(batch_size=100, precision=precision, epochs=0.02)
        train(build_model(recipe), data, recipe, runtime, progress=False, log=lambda s: None)
        recipe = recipe.replace(epochs=epochs)
        model = build_model(recipe)
        result = train(model, data, recipe, runtime, progress=False, log=lambda s: None)
        train_ips = result.history[-1]["images_per_second"]
    started = time.perf_counter()
    if runtime is None:
        with torch.inference_mode():
            for i in range(0, len(data.test), 1000):
                model(as_input(data.test.images[i:i + 1000]))
    else:
        evaluate(model, data.test, 1000, runtime)
    eval_ips = len(data.test) / (time.perf_counter() - started)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": name, "variant": variant, "train": train_ips, "eval": eval_ips,
            "peak_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="simple,deep,fast")
    parser.add_argument("--epochs", type=float, default=0.2, help="training measured per config")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "VARIANT"))
    args = parser.parse_args()
    print(format_environment(), "\n", flush=True)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.epochs)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, batch 100 (the lecture's)")
    print(f"{'model':<7} {'variant':<14} {'train img/s':>12} {'eval img/s':>11} {'peak MiB':>9}"
          f" {'train vs plain':>15}")
    for name in args.models.split(","):
        variants = (["plain"] if name in ("simple", "deep") else []) + ["fp32", "bf16"]
        baseline = None
        for variant in variants:
            out = subprocess.run([sys.executable, __file__, "--worker", name, variant,
                                  "--epochs", str(args.epochs)], capture_output=True, text=True,
                                 check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            baseline = baseline or (r["train"] if variant == "plain" else None)
            ratio = f"{r['train'] / baseline:.2f}x" if baseline else "-"
            label = "plain PyTorch" if variant == "plain" else f"mnist-cnn {variant}"
            print(f"{name:<7} {label:<14} {r['train']:>12,.0f} {r['eval']:>11,.0f} "
                  f"{r['peak_mib']:>9,.0f} {ratio:>15}", flush=True)


if __name__ == "__main__":
    main()
