"""The one checkpoint format: a safetensors file holding the weights (and, for resuming, the
optimizer's tensors and the RNG state) with JSON metadata in its header.

safetensors stores raw tensors and a JSON header only, so loading a file never runs code from it:
a checkpoint from an untrusted source can be damaged or wrong, never dangerous. To keep it that
way, `read_checkpoint` checks a file as a whole before any network or optimizer sees it: its size,
every metadata field's type and range (`CheckpointMeta`), the network its recipe describes (built
on the `meta` device, which allocates nothing), and every tensor's name, shape, dtype and values.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from ..data.sources import DATASETS, dataset_info
from ..errors import MnistCnnError
from ..files import write_atomically
from .recipes import Recipe, is_number
from .registry import build_model, model_entry


class Optimizer(Protocol):
    """What a checkpoint keeps of an optimizer, in torch.optim's layout (training/optim.py's
    optimizers, or torch.optim's own)."""

    param_groups: list[dict[str, Any]]
    state: dict[torch.Tensor, dict[str, Any]]

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


FORMAT = "mnist-cnn-checkpoint"
VERSION = 1
META_KEY = "mnist_cnn"
CHECKPOINT_NAME = "last.safetensors"  # the checkpoint a training run keeps in its folder
# The largest real checkpoint (`best` with its optimizer state) is a few MB; anything this big is
# not one, and is refused before it is read.
MAX_BYTES = 256 * 1024 * 1024
MAX_PARAMETERS = 50_000_000
MAX_COUNT = 2 ** 62  # epochs and steps
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0  # a calibration temperature outside is no fit
OPTIMIZER_STATE = {"adam": ("step", "exp_avg", "exp_avg_sq"),
                   "adamw": ("step", "exp_avg", "exp_avg_sq"),
                   "sgd": ("momentum_buffer",)}
OPTIM_KEY = re.compile(r"optim\.(0|[1-9][0-9]{0,8})\.([a-z_]+)")
RNG_KEY = "rng.torch"
# Training keeps every value of a network small: the shipped model's largest is 6.8 (a batch-norm
# running variance), its largest weight 1.2. Adam moves a weight by about lr per step at most, so
# even the longest recipe here (best: 15 epochs of 430 steps at a peak lr of 0.003) moves one by
# under 20. A value past these bounds is damage (one flipped exponent bit turns 0.3 into 1e38;
# a first-layer weight of 1e4 made a clear 7 read "3, 100%"), never training.
MAX_WEIGHT = 1000.0  # |value| of any weight, bias or running mean
MAX_VARIANCE = MAX_WEIGHT ** 2  # a batch-norm running variance: a square of such values


@dataclass(frozen=True)
class CheckpointMeta:
    """A checkpoint's metadata, every field checked. Absent optional fields are None or empty."""

    recipe: Recipe
    format: str = FORMAT
    version: int = VERSION
    dataset: str | None = None
    checksums: dict[str, str] | None = None
    classes: tuple[str, ...] | None = None
    train_size: int | None = None  # images trained on (fewer when some were held out)
    epoch: int | None = None
    step: int | None = None
    # epochs the weights had trained in an earlier run before this one went on from them (the
    # shipped model: 15 of the `best` recipe, then 1 with outlier exposure)
    earlier_epochs: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    param_groups: list[dict[str, Any]] | None = None  # the optimizer's, as torch saves them
    # below this largest class probability an image is "not a digit" (novelty.py); None: the
    # network was never calibrated, and refuses nothing
    digit_threshold: float | None = None
    # the logits are divided by this before the softmax wherever a probability is shown
    # (calibration.py); None: as trained
    temperature: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # other JSON keys, kept as they were

    def trained_for(self) -> str:
        """How long the weights trained, counting an earlier run they went on from."""
        if self.epoch is None:
            return "after epoch ?"
        if self.earlier_epochs:
            return (f"after {self.earlier_epochs + self.epoch} epochs ({self.earlier_epochs}, "
                    f"then {self.epoch} with the recipe recorded)")
        return f"after epoch {self.epoch}"

    def class_names(self) -> tuple[str, ...]:
        # checkpoints written by `train` name their classes; otherwise the dataset's are the ones
        return self.classes or dataset_info(self.dataset or "mnist").classes

    def to_dict(self) -> dict[str, Any]:
        """The JSON object stored in the file (the same keys as ever)."""
        d: dict[str, Any] = {**self.extra, "format": self.format, "version": self.version,
                             "recipe": self.recipe.to_dict()}
        optional = {"dataset": self.dataset, "checksums": self.checksums,
                    "classes": list(self.classes) if self.classes is not None else None,
                    "train_size": self.train_size, "epoch": self.epoch, "step": self.step,
                    "earlier_epochs": self.earlier_epochs, "digit_threshold": self.digit_threshold,
                    "temperature": self.temperature}
        d.update({k: v for k, v in optional.items() if v is not None})
        if self.metrics:
            d["metrics"] = self.metrics
        if self.history:
            d["history"] = self.history
        if self.param_groups is not None:
            d["optimizer"] = {"param_groups": self.param_groups}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str) -> CheckpointMeta:
        """Check every field of a checkpoint's metadata; one line naming the problem if wrong."""
        def bad(problem: str) -> MnistCnnError:
            return MnistCnnError(f"{source}: {problem}")

        if (not isinstance(d, dict) or d.get("format") != FORMAT
                or not isinstance(d.get("recipe"), dict) or not is_int(d.get("version"))):
            raise bad("not a mnist-cnn checkpoint (unexpected metadata)")
        if d["version"] > VERSION:
            raise bad(f"checkpoint format version {short(d['version'])} is newer than this mnist-cnn "
                      f"understands ({VERSION}); upgrade mnist-cnn")
        if d["version"] < 1:
            raise bad(f"checkpoint format version {short(d['version'])} does not exist")
        recipe = recipe_of(d, source)
        dataset, checksums, classes = d.get("dataset"), d.get("checksums"), d.get("classes")
        _check_data_fields(dataset, checksums, classes, bad)
        for key in ("train_size", "epoch", "step", "earlier_epochs"):
            if d.get(key) is not None and not (is_int(d[key]) and 0 <= d[key] < MAX_COUNT):
                raise bad(f"{key!r} must be a non-negative integer, not {short(d[key])}")
        metrics, history = d.get("metrics") or {}, d.get("history") or []
        _check_log(metrics, history, bad)
        param_groups = _param_groups(d.get("optimizer"), bad)
        threshold, temperature = d.get("digit_threshold"), d.get("temperature")
        _check_calibration(threshold, temperature, bad)
        known = {f.name for f in dataclasses.fields(cls)} | {"optimizer"}
        return cls(recipe=recipe, format=d["format"], version=d["version"], dataset=dataset,
                   checksums=checksums, classes=tuple(classes) if classes else None,
                   train_size=d.get("train_size"), epoch=d.get("epoch"), step=d.get("step"),
                   earlier_epochs=d.get("earlier_epochs"), metrics=metrics, history=history,
                   param_groups=param_groups, digit_threshold=threshold, temperature=temperature,
                   extra={k: v for k, v in d.items() if k not in known})


Problem = Callable[[str], MnistCnnError]  # a problem's text -> the error naming its checkpoint


def _check_data_fields(dataset: Any, checksums: Any, classes: Any, bad: Problem) -> None:
    if dataset is not None and not (isinstance(dataset, str) and dataset in DATASETS):
        raise bad(f"unknown dataset {dataset!r} in the metadata")
    if checksums is not None and not (isinstance(checksums, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in checksums.items())):
        raise bad("'checksums' must map file names to strings")
    if classes is not None and not (isinstance(classes, list) and classes
                                    and all(isinstance(c, str) for c in classes)):
        raise bad("'classes' must be a list of class names")


def _check_log(metrics: Any, history: Any, bad: Problem) -> None:
    if not is_record(metrics):
        raise bad("'metrics' must map names to finite numbers")
    if not (isinstance(history, list) and all(
            is_record(r) and is_int(r.get("epoch")) and 1 <= r["epoch"] < MAX_COUNT
            for r in history)):
        raise bad("'history' must be a list of records of finite numbers, each with its "
                  "epoch (a positive integer)")


def _param_groups(optimizer: Any, bad: Problem) -> list | None:
    """The optimizer's param_groups (None without an optimizer), checked."""
    if optimizer is None:
        return None
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    if not (isinstance(groups, list) and all(
            isinstance(g, dict) and isinstance(g.get("params"), list)
            and all(is_int(i) and i >= 0 for i in g["params"]) for g in groups)):
        raise bad("'optimizer' must hold param_groups, each with its params' indices")
    return groups


def _check_calibration(threshold: Any, temperature: Any, bad: Problem) -> None:
    if threshold is not None and not (is_number(threshold) and 0 <= threshold <= 1):
        raise bad(f"'digit_threshold' must be a probability (0 to 1), not {short(threshold)}")
    if temperature is not None and not (is_number(temperature)
                                        and MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        raise bad(f"'temperature' must be a number from {MIN_TEMPERATURE} to "
                  f"{MAX_TEMPERATURE}, not {short(temperature)}")


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_record(r: Any) -> bool:
    """A dict of names to finite numbers, or short lists of them (a metrics line: "threads" lists
    the thread counts an epoch used)."""
    def value_ok(v: Any) -> bool:
        return is_number(v) or (isinstance(v, list) and len(v) <= 64 and all(map(is_number, v)))

    return isinstance(r, dict) and all(isinstance(k, str) and value_ok(v) for k, v in r.items())


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def save_checkpoint(path: str | os.PathLike, model: nn.Module,
                    meta: CheckpointMeta | dict[str, Any],
                    optimizer: Optimizer | None = None,
                    rng_state: torch.Tensor | None = None) -> None:
    """Write weights + metadata (+ optimizer state and RNG state for resuming), atomically.

    `meta` is a CheckpointMeta, or a dict holding "recipe" (a Recipe's dict) and otherwise
    free-form JSON: dataset name and checksums, classes, epoch, step, metrics, history.
    A checkpoint that the readers would refuse (NaN weights, say) is not written.
    """
    try:
        data = encode_checkpoint(model, meta, optimizer, rng_state)
    except MnistCnnError as e:
        raise MnistCnnError(f"{path}: not written, since it could not be read back: {e}") from None
    write_atomically(path, data)


def encode_checkpoint(model: nn.Module, meta: CheckpointMeta | dict[str, Any],
                      optimizer: Optimizer | None = None,
                      rng_state: torch.Tensor | None = None) -> bytes:
    """The bytes of save_checkpoint's file, checked as read_checkpoint checks a file (an error
    says what is wrong, without a file name)."""
    if isinstance(meta, CheckpointMeta):
        meta = meta.to_dict()
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
        tensors[RNG_KEY] = rng_state
    data = save_tensors(tensors, metadata={META_KEY: json.dumps(meta)})
    try:
        parse_checkpoint(data, "checkpoint")
    except MnistCnnError as e:
        raise MnistCnnError(str(e).removeprefix("checkpoint: ")) from None
    return data


def read_bytes(path: Path) -> bytes:
    """The file's bytes, refused before reading when it is larger than any checkpoint."""
    try:
        is_file = path.is_file()
    except OSError as e:  # is_file() answers False for most errors, not for EACCES
        raise MnistCnnError(f"{path}: cannot read the checkpoint ({e.strerror or e})") from None
    if not is_file:
        raise MnistCnnError(f"{path}: no such checkpoint file")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)  # bounded even if the file grows while being read
    except OSError as e:
        raise MnistCnnError(f"{path}: cannot read the checkpoint ({e.strerror or e})") from None
    if len(raw) > MAX_BYTES:
        raise MnistCnnError(f"{path}: too large for a mnist-cnn checkpoint (over "
                            f"{MAX_BYTES // 2 ** 20} MiB); not reading it")
    return raw


def run_checkpoint(path: str | os.PathLike) -> Path | None:
    """The checkpoint a training run's folder (what `train --out` names) keeps, or None when
    `path` is no such folder."""
    inside = Path(path) / CHECKPOINT_NAME
    try:
        return inside if inside.is_file() else None
    except OSError:
        return None  # reading the path itself says what is wrong with it


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The checkpoint a path names: a file as it is, a training run's folder by the checkpoint
    it keeps there."""
    found = run_checkpoint(path)
    if found is not None:
        return found
    path = Path(path)
    try:
        is_dir = path.is_dir()
    except OSError:
        return path  # read_bytes says what is wrong with it
    if is_dir:
        raise MnistCnnError(f"{path}: a folder without a training run's checkpoint "
                            f"({CHECKPOINT_NAME}) in it; name a .safetensors file")
    return path


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """The tensors and metadata of a checkpoint (a file, or a training run's folder), checked as
    a whole: every way of being wrong is reported as one line naming the file."""
    path = checkpoint_file(path)
    raw = read_bytes(path)
    pinned = shipped_pin(path)
    if pinned is not None:
        check_shipped(raw, path, pinned)
    return parse_checkpoint(raw, path)


def parse_checkpoint(raw: bytes, path: str | os.PathLike
                     ) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """read_checkpoint for a file's bytes read elsewhere (`path` names it in messages)."""
    try:
        tensors = load_tensors(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + header_len])
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MnistCnnError(f"{path}: not a readable checkpoint (damaged, truncated, or not a "
                            f"safetensors file: {one_line(e)})") from None
    try:
        meta = json.loads(header.get("__metadata__", {})[META_KEY])
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError):
        raise MnistCnnError(f"{path}: a safetensors file, but not a mnist-cnn checkpoint "
                            "(no mnist-cnn metadata)") from None
    except ValueError:  # an integer of thousands of digits, which Python refuses to parse
        raise MnistCnnError(f"{path}: the mnist-cnn metadata holds a number thousands of digits "
                            "long") from None
    except RecursionError:  # JSON nested thousands deep
        raise MnistCnnError(f"{path}: the mnist-cnn metadata is nested too deeply") from None
    meta = CheckpointMeta.from_dict(meta, str(path))
    check_tensors(tensors, meta, skeleton(meta, str(path)), str(path))
    return tensors, meta


def recipe_of(meta: dict[str, Any], source: str) -> Recipe:
    """The validated recipe of a checkpoint's raw metadata."""
    try:
        return Recipe.from_dict(meta["recipe"])
    except (KeyError, TypeError, ValueError, MnistCnnError) as e:
        raise MnistCnnError(f"{source}: the checkpoint's recipe is malformed ({one_line(e)})"
                            ) from None


def check_model_args(recipe: Recipe, source: str) -> None:
    """model_args: only the build function's keyword arguments, each of its default's type."""
    defaults = {name: p.default for name, p in
                inspect.signature(model_entry(recipe.model).build).parameters.items()}
    for name, value in recipe.model_args.items():
        if name not in defaults:
            raise MnistCnnError(f"{source}: model {recipe.model!r} takes no argument {name!r} "
                                f"(model_args); it takes {', '.join(defaults) or 'none'}")
        default = defaults[name]
        if isinstance(default, tuple):
            ok = (isinstance(value, (list, tuple)) and len(value) == len(default)
                  and all(is_int(v) for v in value))
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = is_number(value)
        else:
            ok = is_int(value)
        if not ok:
            wanted = (f"a list of {len(default)} integers" if isinstance(default, tuple)
                      else f"a {type(default).__name__}")
            raise MnistCnnError(f"{source}: model_args {name}={short(value)}: expected {wanted}")


def skeleton(meta: CheckpointMeta, source: str) -> nn.Module:
    """The network the recipe describes, built on the `meta` device: shapes without memory, so
    tampered sizes are caught before anything is allocated."""
    recipe = meta.recipe
    try:
        model_entry(recipe.model)
    except MnistCnnError as e:
        raise MnistCnnError(f"{source}: {e}") from None
    check_model_args(recipe, source)
    args = {"dropout": recipe.dropout, **recipe.model_args}
    try:
        with torch.device("meta"):
            model = model_entry(recipe.model).build(**args).eval()
            params = sum(p.numel() for p in model.parameters())
            if params > MAX_PARAMETERS:
                raise MnistCnnError(f"{source}: model_args {recipe.model_args} make a network of "
                                    f"{params:,} parameters (limit {MAX_PARAMETERS:,})")
        # the output shape from one blank image, through a CPU copy of the size just allowed: on
        # the meta device a forward pass imports torch's compiler stack (over a second)
        with torch.random.fork_rng(devices=[]), torch.no_grad():  # the caller's RNG untouched
            outputs = model_entry(recipe.model).build(**args).eval()(torch.zeros(1, 1, 28, 28)).shape
    except MnistCnnError:
        raise
    except Exception as e:  # anything a tampered size makes the build or a forward pass raise
        raise MnistCnnError(f"{source}: model_args {short(recipe.model_args)} do not make a "
                            f"working {recipe.model!r} network ({one_line(e)})") from None
    if len(outputs) != 2 or outputs[1] < 1:
        raise MnistCnnError(f"{source}: the network gives outputs of shape {tuple(outputs)}")
    try:
        names = meta.class_names()
    except MnistCnnError as e:
        raise MnistCnnError(f"{source}: {e}") from None
    if len(names) != outputs[1]:
        raise MnistCnnError(f"{source}: {len(names)} class names for a network of "
                            f"{outputs[1]} outputs")
    return model


def describe(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"


def check_tensors(tensors: dict[str, torch.Tensor], meta: CheckpointMeta, network: nn.Module,
                  source: str) -> None:
    """Every tensor named as we write them, shaped and typed as the network needs, finite."""
    expected = {f"model.{k}": v for k, v in network.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise MnistCnnError(f"{source}: weights do not fit the network: missing "
                            f"{', '.join(missing[:5])}")
    for name, t in tensors.items():
        if name in expected:
            if t.shape != expected[name].shape or t.dtype != expected[name].dtype:
                raise MnistCnnError(f"{source}: weights do not fit the network: {name} is "
                                    f"{describe(t)}, the network needs {describe(expected[name])}")
        elif name == RNG_KEY:
            check_rng_state(t, source)
        elif not OPTIM_KEY.fullmatch(name):
            raise MnistCnnError(f"{source}: weights do not fit the network: unexpected tensor "
                                f"{short(name)}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise MnistCnnError(f"{source}: tensor {name} holds NaN or infinite values")
        if name in expected and t.is_floating_point() and t.numel():
            limit = MAX_VARIANCE if name.endswith(".running_var") else MAX_WEIGHT
            largest = float(t.abs().max())
            if largest > limit:
                raise MnistCnnError(f"{source}: tensor {name} holds {largest:.3g}, far beyond what "
                                    f"training reaches (at most {limit:g})")
        if name.endswith(".running_var") and bool((t < 0).any()):
            raise MnistCnnError(f"{source}: tensor {name} holds negative variances")
    check_optimizer_tensors(tensors, list(network.parameters()), meta.recipe.optimizer, source)


def check_rng_state(t: torch.Tensor, source: str) -> None:
    reference = torch.get_rng_state()
    if t.dtype != torch.uint8 or t.shape != reference.shape:
        raise MnistCnnError(f"{source}: RNG state {RNG_KEY} is {describe(t)}, expected "
                            f"{describe(reference)}")
    try:
        torch.Generator().set_state(t)  # a scratch generator: the global one is left alone
    except RuntimeError as e:
        raise MnistCnnError(f"{source}: RNG state {RNG_KEY} is damaged ({one_line(e)})") from None


def check_optimizer_tensors(tensors: dict[str, torch.Tensor], params: list[torch.Tensor],
                            optimizer: str, source: str) -> None:
    """Each parameter's optimizer state: all of its tensors or none, shaped as the parameter (the
    fused kernels write through them unchecked); `step` a non-negative scalar."""
    names = OPTIMIZER_STATE[optimizer]
    found: dict[int, set[str]] = {}
    for key, t in tensors.items():
        match = OPTIM_KEY.fullmatch(key)
        if not match:
            continue
        index, name = int(match[1]), match[2]
        if index >= len(params) or name not in names:
            raise MnistCnnError(f"{source}: optimizer state {key} does not fit the {optimizer} "
                                f"optimizer of a network of {len(params)} parameter tensors")
        param = params[index]
        if name == "step":
            ok = t.shape == () and t.is_floating_point() and float(t) >= 0
            need = "a non-negative floating scalar"
        else:
            ok = t.shape == param.shape and t.dtype == param.dtype
            need = describe(param)
        if not ok:
            raise MnistCnnError(f"{source}: optimizer state {key} is {describe(t)}, needed: {need}")
        found.setdefault(index, set()).add(name)
    for index, present in sorted(found.items()):
        if present != set(names):
            raise MnistCnnError(f"{source}: optimizer state of parameter {index} is incomplete "
                                f"(missing {', '.join(sorted(set(names) - present))})")


def load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights)
                   if (expected[k].shape, expected[k].dtype) != (weights[k].shape, weights[k].dtype))
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {', '.join(missing[:5])}")
        if unexpected:
            details.append(f"unexpected {', '.join(unexpected[:5])}")
        if wrong:
            details.append("wrong shape for " + ", ".join(
                f"{k} {describe(weights[k])} vs {describe(expected[k])}" for k in wrong[:5]))
        raise MnistCnnError(f"{source}: weights do not fit the network: {'; '.join(details)}")
    model.load_state_dict(weights)


def load_checkpoint(path: str | os.PathLike, expect_model: str | None = None,
                    device: torch.device | str = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the network a checkpoint was trained as and load its weights (in eval mode)."""
    tensors, meta = read_checkpoint(path)
    if expect_model is not None and meta.recipe.model != expect_model:
        raise MnistCnnError(f"{path}: a checkpoint of model {meta.recipe.model!r}, expected "
                            f"{expect_model!r}")
    model = build_model(meta.recipe)
    load_weights(model, tensors, str(path))
    return model.to(device).eval(), meta


# A trained network shipped inside the package, so that predict and serve work right after
# installation; benchmarks/build_pretrained.py rebuilds it from a fixed recipe and seed, and
# prints the SHA-256 to pin here.
PRETRAINED = "pretrained/mnist-best.safetensors"
PRETRAINED_SHA256 = "31d72c6236ac783457f29448c312b5b218b3919a47b118c098fafe3cc6084048"
SHIPPED = Path(__file__).parent.parent / PRETRAINED
# The number reader's whole-digit check (inference/numbers.py): whether a piece of a row's ink is
# one whole digit, or a part of one, or several; benchmarks/build_whole_digit.py rebuilds it
WHOLE_DIGIT = "pretrained/whole-digit.safetensors"
WHOLE_DIGIT_SHA256 = "529869e699a8e5164ef25ae9278168297fa287c843f263aeba5472b0fe2aa00a"
SHIPPED_WHOLE_DIGIT = Path(__file__).parent.parent / WHOLE_DIGIT


def pretrained_path(shipped: Path | None = None) -> Path:
    """Where the shipped checkpoint lies (package data): the digit network, or `shipped`
    (SHIPPED_WHOLE_DIGIT)."""
    path = SHIPPED if shipped is None else shipped
    # a checkpoint named stands in for the digit network, not for the whole-digit check
    remedy = "reinstall mnist-cnn" + (", or name a checkpoint" if shipped is None else "")
    try:
        is_file = path.is_file()
    except OSError as e:  # the package's folder unreadable: is_file() raises for EACCES
        raise MnistCnnError(f"{path}: cannot read the model shipped with mnist-cnn "
                            f"({e.strerror or e}); {remedy}") from None
    if not is_file:
        raise MnistCnnError(f"{path}: the model shipped with mnist-cnn is missing; {remedy}")
    return path


def shipped_pin(path: Path) -> str | None:
    """The SHA-256 pinned for `path` when it is one of the files shipped with mnist-cnn."""
    pins = {SHIPPED.resolve(): PRETRAINED_SHA256, SHIPPED_WHOLE_DIGIT.resolve(): WHOLE_DIGIT_SHA256}
    return pins.get(path.resolve())


def check_shipped(raw: bytes, path: Path, pinned: str) -> None:
    """A shipped model is exactly the file mnist-cnn was built with (SHA-256 `pinned`): a damaged
    weight can stay finite and in range, and still make it answer wrongly with confidence."""
    if hashlib.sha256(raw).hexdigest() != pinned:
        raise MnistCnnError(f"{path}: the model shipped with mnist-cnn is damaged (not the file "
                            "it was built with); reinstall mnist-cnn")


class Calibrated(nn.Module):
    """A network whose logits are divided by its checkpoint's temperature: the probabilities
    every reader shows, and "not a digit" decides on, are the calibrated ones."""

    def __init__(self, network: nn.Module, temperature: float) -> None:
        super().__init__()
        self.network, self.temperature = network, float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x) / self.temperature


def load_pretrained(device: torch.device | str = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """The network shipped with mnist-cnn (the `best` recipe on MNIST), ready to predict: its
    probabilities calibrated by the temperature it was built with (calibration.py), as the
    "not a digit" threshold in its metadata expects."""
    model, meta = load_checkpoint(pretrained_path(), device=device)
    return (model if meta.temperature is None else Calibrated(model, meta.temperature)), meta


@functools.cache
def load_whole_digit() -> nn.Module:
    """The whole-digit check shipped with mnist-cnn (loaded once: every number read uses it)."""
    model, _ = load_checkpoint(pretrained_path(SHIPPED_WHOLE_DIGIT))
    return model


def load_optimizer_state(optimizer: Optimizer, tensors: dict[str, torch.Tensor],
                         meta: CheckpointMeta, source: str) -> None:
    """Give `optimizer` the checkpoint's state, after checking it against the optimizer itself."""
    fresh = optimizer.state_dict()["param_groups"]
    saved = meta.param_groups
    if saved is None:
        raise MnistCnnError(f"{source}: no optimizer state to resume from")
    if [g["params"] for g in saved] != [g["params"] for g in fresh]:
        raise MnistCnnError(f"{source}: optimizer state does not fit: its parameter groups "
                            "differ from this network's")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    kind = meta.recipe.optimizer
    if kind not in OPTIMIZER_STATE or type(optimizer).__name__.lower() != kind:
        raise MnistCnnError(f"{source}: optimizer state of {kind!r} for a "
                            f"{type(optimizer).__name__} optimizer")
    check_optimizer_tensors(tensors, params, kind, source)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if match := OPTIM_KEY.fullmatch(key):
            state.setdefault(int(match[1]), {})[match[2]] = value
    # The saved hyperparameters are not loaded: the recipe (checked equal on resume) sets every
    # one of them, and the lr at every step, so the fresh groups are right and tampered flags
    # (fused, capturable, ...) never reach the optimizer.
    optimizer.load_state_dict({"state": state, "param_groups": fresh})
    # Saved tensors are contiguous; give each state tensor its parameter's memory layout again
    # (channels_last weights), since fused optimizers assume the two match element for element.
    for param, param_state in optimizer.state.items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                param_state[key] = torch.empty_like(param).copy_(value)
