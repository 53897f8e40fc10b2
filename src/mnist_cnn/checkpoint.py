"""The one checkpoint format: a safetensors file holding the weights (and, for resuming, the
optimizer's tensors and the RNG state) with JSON metadata in its header.

safetensors stores raw tensors and a JSON header only, so loading a file never runs code from it:
a checkpoint from an untrusted source can be damaged or wrong, never dangerous.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from .errors import MnistCnnError
from .files import write_atomically
from .models import build_model, model_entry
from .recipes import Recipe

FORMAT = "mnist-cnn-checkpoint"
VERSION = 1
META_KEY = "mnist_cnn"


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None,
                    rng_state: torch.Tensor | None = None) -> None:
    """Write weights + metadata (+ optimizer state and RNG state for resuming), atomically.

    `meta` must hold "recipe" (a Recipe's dict) and is otherwise free-form JSON: dataset name and
    checksums, epoch, metrics, scheduler state.
    """
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "version": VERSION, **meta}
    if optimizer is not None:
        state = optimizer.state_dict()
        for param_id, param_state in state["state"].items():
            for key, value in param_state.items():
                if not isinstance(value, torch.Tensor):
                    value = torch.tensor(value)
                tensors[f"optim.{param_id}.{key}"] = value.detach().cpu().contiguous()
        meta["optimizer"] = {"param_groups": state["param_groups"]}
    if rng_state is not None:
        tensors["rng.torch"] = rng_state
    data = save_tensors(tensors, metadata={META_KEY: json.dumps(meta)})
    write_atomically(path, data)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The raw tensors and metadata of a checkpoint, with every way of being wrong reported."""
    path = Path(path)
    if not path.is_file():
        raise MnistCnnError(f"{path}: no such checkpoint file")
    return parse_checkpoint(path.read_bytes(), path)


def parse_checkpoint(raw: bytes, path: str | os.PathLike) -> tuple[dict[str, torch.Tensor],
                                                                   dict[str, Any]]:
    """read_checkpoint for a file's bytes read elsewhere (`path` names it in messages)."""
    try:
        tensors = load_tensors(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + header_len])
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MnistCnnError(f"{path}: not a readable checkpoint (damaged, truncated, or not a "
                            f"safetensors file: {e})") from None
    try:
        meta = json.loads(header.get("__metadata__", {})[META_KEY])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise MnistCnnError(f"{path}: a safetensors file, but not a mnist-cnn checkpoint "
                            "(no mnist-cnn metadata)") from None
    if (not isinstance(meta, dict) or meta.get("format") != FORMAT
            or not isinstance(meta.get("recipe"), dict) or not isinstance(meta.get("version"), int)):
        raise MnistCnnError(f"{path}: not a mnist-cnn checkpoint (unexpected metadata)")
    if meta["version"] > VERSION:
        raise MnistCnnError(f"{path}: checkpoint format version {meta['version']} is newer than "
                            f"this mnist-cnn understands ({VERSION}); upgrade mnist-cnn")
    return tensors, meta


def recipe_of(meta: dict[str, Any], source: str) -> Recipe:
    try:
        return Recipe.from_dict(meta["recipe"])
    except (TypeError, ValueError) as e:
        raise MnistCnnError(f"{source}: the checkpoint's recipe is malformed ({e})") from None


def load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {', '.join(missing[:5])}")
        if unexpected:
            details.append(f"unexpected {', '.join(unexpected[:5])}")
        if wrong:
            details.append("wrong shape for " + ", ".join(
                f"{k} {tuple(weights[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:5]))
        raise MnistCnnError(f"{source}: weights do not fit the network: {'; '.join(details)}")
    model.load_state_dict(weights)


def load_checkpoint(path: str | os.PathLike, expect_model: str | None = None,
                    device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network a checkpoint was trained as and load its weights (in eval mode)."""
    tensors, meta = read_checkpoint(path)
    recipe = recipe_of(meta, str(path))
    model_entry(recipe.model)  # an unknown network name is a clear error
    if expect_model is not None and recipe.model != expect_model:
        raise MnistCnnError(f"{path}: a checkpoint of model {recipe.model!r}, expected "
                            f"{expect_model!r}")
    model = build_model(recipe)
    load_weights(model, tensors, str(path))
    return model.to(device).eval(), meta


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         meta: dict[str, Any], source: str) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, param_id, name = key.split(".", 2)
            state.setdefault(int(param_id), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state,
                                   "param_groups": meta["optimizer"]["param_groups"]})
    except (KeyError, ValueError, TypeError) as e:
        raise MnistCnnError(f"{source}: optimizer state does not fit: {e}") from None
    # Saved tensors are contiguous; give each state tensor its parameter's memory layout again
    # (channels_last weights), since fused optimizers assume the two match element for element.
    for param, param_state in optimizer.state.items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                param_state[key] = torch.empty_like(param).copy_(value)
