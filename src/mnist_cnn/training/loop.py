"""One training loop for every network: the recipe says what to do, the runtime where.

After every epoch it evaluates the validation split, appends a line to `metrics.jsonl` and writes
`last.safetensors` atomically (weights, optimizer, RNG and scheduler state), so an interrupted run
resumes losing at most the epoch in flight, and a resumed run gives the same numbers as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data.dataset import Dataset
from ..errors import MnistCnnError
from ..files import claim_run_folder, write_atomically
from ..inference.evaluation import evaluate
from ..models.checkpoint import (
    CHECKPOINT_NAME,
    RNG_KEY,
    CheckpointMeta,
    encode_checkpoint,
    load_optimizer_state,
    load_weights,
    parse_checkpoint,
    read_bytes,
)
from ..models.recipes import Recipe
from ..models.registry import as_input
from ..runtime import distributed
from ..runtime.device import Runtime
from .optim import SGD, Adam, AdamW, Optimizer

METRICS_NAME = "metrics.jsonl"
# Recipe fields that may change when a run is resumed (training longer is a normal thing to do).
RESUMABLE_CHANGES = {"epochs", "eval_batch_size"}


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None
    train_seconds: float = 0.0
    epoch: int | None = None  # the epoch `checkpoint` holds


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during `train`: what the run folder holds. `checkpoint` None: nothing of this run;
    `epoch` None: the checkpoint resumed from, as it was."""

    def __init__(self, checkpoint: Path | None, epoch: int | None) -> None:
        super().__init__(checkpoint, epoch)
        self.checkpoint, self.epoch = checkpoint, epoch


class Diverged(Exception):
    """The loss or the weights are no longer finite numbers (`_train` says what to do)."""


# On a GPU, checking the loss waits for the queued work: done every this many steps, not every one
CHECK_EVERY = 32


def make_optimizer(recipe: Recipe, model: nn.Module) -> Optimizer:
    params = model.parameters()
    if recipe.optimizer == "sgd":
        return SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=True,
                   weight_decay=recipe.weight_decay)
    adam = AdamW if recipe.optimizer == "adamw" else Adam
    return adam(params, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps,
                weight_decay=recipe.weight_decay)


def lr_factor(recipe: Recipe, step: int, total_steps: int) -> float:
    """The learning rate at `step` as a fraction of recipe.lr."""
    if recipe.schedule == "constant":
        return 1.0
    progress = step / max(total_steps, 1)
    if recipe.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    # one-cycle: linear warm-up from lr/25 to lr, then linear decay to nearly zero
    if progress < recipe.warmup:
        return 0.04 + 0.96 * progress / recipe.warmup
    return max(1e-3, 1 - (progress - recipe.warmup) / (1 - recipe.warmup))


def shard(perm: torch.Tensor, i: int, batch_size: int, rank: int = 0, world_size: int = 1
          ) -> torch.Tensor:
    """This rank's part of the epoch's global batch `i`: the batch cut into `world_size`
    consecutive slices, so that all ranks together take exactly the batch one process would."""
    per_rank = batch_size // world_size
    start = i * batch_size + rank * per_rank
    return perm[start:start + per_rank]


def epoch_permutation(seed: int, epoch: int, n: int, device: torch.device) -> torch.Tensor:
    """Shuffle order derived from (seed, epoch) alone, so a resumed run shuffles identically."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).to(device)


def check_resumable(saved: Recipe, recipe: Recipe, data: Dataset, meta: CheckpointMeta,
                    source: str) -> int:
    """The step to resume from, or a MnistCnnError saying why this run cannot resume."""
    differs = [f"{k} ({a} -> {b})" for k, a in saved.to_dict().items()
               if k not in RESUMABLE_CHANGES and (b := recipe.to_dict()[k]) != a]
    if differs:
        raise MnistCnnError(f"{source}: cannot resume: the recipe differs in "
                            + ", ".join(differs) + "; start a new run in another --out directory")
    if meta.dataset != data.name:
        raise MnistCnnError(f"{source}: cannot resume: trained on {meta.dataset!r}, "
                            f"not on {data.name!r}")
    if meta.checksums != data.checksums:
        raise MnistCnnError(f"{source}: cannot resume: trained on {meta.dataset!r} data files "
                            "other than these (their checksums differ)")
    if meta.train_size is not None and meta.train_size != len(data.train):
        raise MnistCnnError(f"{source}: cannot resume: trained on {meta.train_size:,} images, "
                            f"not on {len(data.train):,} (another --validation)")
    if meta.epoch is None or meta.step is None:
        raise MnistCnnError(f"{source}: cannot resume: the checkpoint records no epoch and step")
    return meta.step


def checkpoint_bytes(model: nn.Module) -> int:
    """About what a run's folder needs free: the weights, the optimizer's state (Adam keeps two
    values per weight), the temporary copy of an atomic write, and a margin for the logs."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return 4 * weights + 8 * 2**20


def quiet(_line: str) -> None:
    pass


def train(model: nn.Module, data: Dataset, recipe: Recipe, runtime: Runtime,  # noqa: PLR0913
          out_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
          log: Callable[[str], None] = print, overwrite: bool = False) -> TrainResult:
    """Train `model`; with `out_dir`, checkpoint every epoch there (see the module docstring).

    The folder is checked and locked before the first step (files.claim_run_folder): a folder
    holding another run's checkpoint is refused unless `resume` or `overwrite`. Under torchrun,
    rank 0 alone claims it and the others wait for its verdict; a group that torchrun restarted
    after a failure resumes from the checkpoint there by itself.
    """
    if not runtime.is_main:
        log = quiet
    result = TrainResult(model)
    try:
        if out_dir is None:
            return Trainer(model, data, recipe, runtime, None, progress, log, result).fit(resume)
        out = Path(out_dir)
        with contextlib.ExitStack() as claim:
            def claim_folder() -> list[int]:
                again = resume
                if distributed.restart_count() > 0 and (out / CHECKPOINT_NAME).is_file():
                    again = True  # the checkpoint is this run's own, from before the failure
                claim.enter_context(claim_run_folder(out, checkpoint_bytes(model),
                                                     CHECKPOINT_NAME, again or overwrite))
                return [again]

            (claimed,) = distributed.on_rank0(claim_folder, 1, runtime, f"{out}: rank 0 could "
                                              "not use the run folder (its message says why)")
            return Trainer(model, data, recipe, runtime, out, progress, log, result).fit(
                bool(claimed))
    except KeyboardInterrupt:  # Ctrl-C: the caller learns what the folder holds
        raise TrainingInterrupted(result.checkpoint, result.epoch) from None


@dataclass(frozen=True)
class StepPlan:
    """Which steps a run takes: `recipe.epochs` may end inside an epoch (a fraction), and a
    resumed run may start inside one that an earlier, shorter run left partial."""
    steps_per_epoch: int
    total_steps: int

    @classmethod
    def of(cls, recipe: Recipe, train_size: int) -> StepPlan:
        steps_per_epoch = train_size // recipe.batch_size
        if steps_per_epoch == 0:
            raise MnistCnnError(f"batch size {recipe.batch_size} exceeds the {train_size} "
                                "training images")
        return cls(steps_per_epoch, max(1, round(recipe.epochs * steps_per_epoch)))

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def remaining(self, done: int) -> Iterator[tuple[int, int, int]]:
        """(epoch, first, last): each epoch still to run, and its steps first..last-1."""
        for epoch in range(done // self.steps_per_epoch, self.num_epochs):
            first = max(0, done - epoch * self.steps_per_epoch)
            last = min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)
            if first < last:
                yield epoch, first, last


class Trainer:
    """One run of the loop: `fit` resumes if asked, then runs each epoch's steps (`run_epoch`),
    validates and records it (`end_epoch`) and writes the checkpoint (`save`). `result` follows
    what the run folder holds, even when interrupted. Under torchrun every rank steps; rank 0
    alone validates, logs and writes, and the others wait for it."""

    def __init__(self, model: nn.Module, data: Dataset, recipe: Recipe, runtime: Runtime,
                 out: Path | None, progress: bool, log: Callable[[str], None],
                 result: TrainResult) -> None:
        world = runtime.world_size
        if recipe.batch_size % world:
            raise MnistCnnError(f"the global batch of {recipe.batch_size} does not split evenly "
                                f"over {world} processes; choose a batch size that is a multiple "
                                f"of {world}")
        self.model, self.data, self.recipe, self.runtime = model, data, recipe, runtime
        self.out, self.progress, self.log, self.result = out, progress, log, result
        # (torch's stub of Module.to lacks the memory_format keyword that the method accepts)
        model.to(runtime.device, memory_format=runtime.memory_format)  # type: ignore[call-overload]
        self.optimizer = make_optimizer(recipe, model)
        self.plan = StepPlan.of(recipe, len(data.train))
        self.history: list[dict[str, Any]] = []  # one record per epoch

    def fit(self, resume: bool) -> TrainResult:
        runtime, result, world = self.runtime, self.result, self.runtime.world_size
        # dropout draws from torch's global RNG: seeded here, and the caller's state restored after
        devices = [runtime.device] if runtime.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.recipe.seed)
            done = 0  # steps done so far
            if resume:
                result.checkpoint = self.out / CHECKPOINT_NAME if self.out is not None else None
                done, self.history = resume_from(self.out, self.model, self.optimizer,
                                                 self.recipe, self.data, self.log, runtime)
                result.epoch = self.history[-1]["epoch"] if self.history else None
            result.history = self.history
            if world > 1:
                self.log(f"{world} processes: global batch {self.recipe.batch_size}, "
                         f"{self.recipe.batch_size // world} per process")
            self.prepare()
            for epoch, first, last in self.plan.remaining(done):
                try:
                    self.epoch(epoch, first, last)
                except Diverged as e:
                    raise MnistCnnError(diverged(str(e), epoch, self.recipe, result)) from None
        return result

    def epoch(self, epoch: int, first: int, last: int) -> None:
        cost, seconds = self.run_epoch(epoch, first, last)
        self.result.train_seconds += seconds
        if not self.runtime.is_main:
            return  # rank 0 alone validates, logs and writes; the others wait for it
        record = self.end_epoch(epoch, epoch * self.plan.steps_per_epoch + last, last - first,
                                cost, seconds)
        if not math.isfinite(record.get("val_loss", 0.0)):
            raise Diverged("the validation loss is not a finite number")
        self.log(format_epoch(record))
        if self.out is not None:
            with ctrl_c_deferred():  # the files and `result` change together
                self.result.checkpoint = self.save()
                self.result.epoch = record["epoch"]

    def save(self) -> Path:
        assert self.out is not None
        return write_epoch(self.out, self.model, self.optimizer, self.recipe, self.data,
                           self.history)

    def prepare(self) -> None:
        """What every epoch shares: the data on the device, the augmenter, the outliers and the
        model as the ranks call it."""
        runtime, recipe = self.runtime, self.recipe
        self.images = self.data.train.images.to(runtime.device)
        self.labels = self.data.train.labels.to(runtime.device)
        self.augment = make_augmenter(recipe, runtime)
        self.outliers = make_outliers(recipe, runtime)
        self.net = wrap_for_ranks(self.model, runtime)
        # on one CPU process the check is free; elsewhere it waits for the GPU or the other ranks
        alone_on_cpu = runtime.device.type == "cpu" and runtime.world_size == 1
        self.check_every = 1 if alone_on_cpu else CHECK_EVERY

    def run_epoch(self, epoch: int, first: int, last: int) -> tuple[float, float]:
        """Steps first..last-1 of `epoch`: (mean training loss over all ranks, seconds)."""
        recipe, runtime, optimizer = self.recipe, self.runtime, self.optimizer
        perm = epoch_permutation(recipe.seed, epoch, len(self.labels), runtime.device)
        self.model.train()
        loss_sum = torch.zeros((), device=runtime.device)
        started = time.perf_counter()
        bar = tqdm(range(first, last), desc=f"epoch {epoch + 1}/{self.plan.num_epochs}",
                   leave=False, unit="batch",
                   disable=not self.progress or not runtime.is_main or not sys.stderr.isatty())
        with bar:  # closed (its line cleared) also when a step raises
            for i in bar:
                runtime.poll_threads()  # before the step: the first one can decide the first steps
                step = epoch * self.plan.steps_per_epoch + i
                for group in optimizer.param_groups:
                    group["lr"] = recipe.lr * lr_factor(recipe, step, self.plan.total_steps)
                idx = shard(perm, i, recipe.batch_size, runtime.rank, runtime.world_size)
                x = runtime.to_batch(as_input(self.images[idx]))
                if self.augment is not None:
                    x = self.augment(x, step)
                if self.outliers is not None:  # one forward pass for digits and non-digits together
                    x = torch.cat([x, self.outliers(step)])
                with runtime.autocast():
                    logits = self.net(x)
                    loss = F.cross_entropy(logits[:len(idx)], self.labels[idx],
                                           label_smoothing=recipe.label_smoothing)
                    if self.outliers is not None:  # cross-entropy to the uniform distribution
                        loss = loss - recipe.outlier_exposure * F.log_softmax(
                            logits[len(idx):].float(), dim=1).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach()
                if (i + 1 - first) % self.check_every == 0:
                    # a diverged run stops at once, before its NaN weights reach a checkpoint; every
                    # rank checks the same sum, so that all of them stop together
                    total = float(distributed.sum_over_ranks(loss_sum.clone(), runtime))
                    if not math.isfinite(total):
                        raise Diverged(f"the loss is {total} by step {step + 1}")
        runtime.synchronize()  # so the epoch's time includes the GPU's queued work
        seconds = time.perf_counter() - started
        cost = float(distributed.sum_over_ranks(loss_sum, runtime))
        if not math.isfinite(cost):
            raise Diverged(f"the loss is {cost}")
        return cost / ((last - first) * runtime.world_size), seconds

    def end_epoch(self, epoch: int, done: int, steps: int, cost: float, seconds: float
                  ) -> dict[str, Any]:
        """Validate (unless no images were held out), and append the epoch's record to the
        history (replacing a partial epoch's)."""
        history, recipe, runtime = self.history, self.recipe, self.runtime
        if history and history[-1]["epoch"] == epoch + 1:
            history.pop()  # the partial epoch's record gives way to the completed one
        record: dict[str, Any] = {"epoch": epoch + 1, "step": done, "cost": cost}
        if len(self.data.val):
            val = evaluate(self.model, self.data.val, recipe.eval_batch_size, runtime)
            record.update(val_accuracy=val.accuracy, val_loss=val.loss)
        record.update(lr=self.optimizer.param_groups[0]["lr"], train_seconds=seconds,
                      images_per_second=steps * recipe.batch_size / seconds)
        if runtime.world_size > 1:
            record["world_size"] = runtime.world_size
        if runtime.tuner is not None:  # the thread counts the load led to, this epoch
            record["threads"] = runtime.tuner.reset_used()
        history.append(record)
        return record


def diverged(problem: str, epoch: int, recipe: Recipe, result: TrainResult) -> str:
    """One line: what went wrong, what to change, and what the run folder holds."""
    kept = (f"{result.checkpoint} is left as it was (epoch {result.epoch})"
            if result.checkpoint is not None else "no checkpoint was written")
    decay = (f" or the weight decay (--weight-decay, now {recipe.weight_decay:g})"
             if recipe.weight_decay > 0 else "")
    return (f"training diverged in epoch {epoch + 1}: {problem}; lower the learning rate "
            f"(--lr, now {recipe.lr:g}){decay}; {kept}")


def format_epoch(record: dict[str, Any]) -> str:
    """The lecture's line, plus validation accuracy, time, speed and threads."""
    threads = f", threads {'/'.join(map(str, record['threads']))}" if "threads" in record else ""
    val = (f"validation accuracy = {record['val_accuracy']:.4f}" if "val_accuracy" in record
           else "no validation")
    return (f"Epoch: {record['epoch']:04d} cost = {record['cost']:.9f}  {val}  "
            f"({record['train_seconds']:.1f} s, "
            f"{record['images_per_second']:,.0f} images/s{threads})")


def wrap_for_ranks(model: nn.Module, runtime: Runtime) -> nn.Module:
    """The model as the steps call it: under torchrun, wrapped in DistributedDataParallel, which
    averages the gradients over the ranks during the backward pass.

    Batch norm keeps per-rank statistics, without SyncBatchNorm (README: "More than one
    machine" has the measurements). Its running averages start from rank 0's and are not sent
    again every step: only rank 0's are ever used (validation, checkpoints).
    """
    if runtime.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)


def step_seed(recipe: Recipe, step: int, rank: int) -> int:
    """The seed of one step's random draws (augmentation, outliers): derived from the step, so that
    a resumed run draws exactly as an uninterrupted one; each rank draws its own (rank 0 as a
    single process does)."""
    return recipe.seed * 1_000_003 + step + rank * 2**53


def make_augmenter(recipe: Recipe, runtime: Runtime):
    if recipe.augment == "none":
        return None
    from .augment import augment_batch, preset  # only runs that augment need it

    config = preset(recipe.augment)
    generator = torch.Generator(runtime.device)

    def augment(x: torch.Tensor, step: int) -> torch.Tensor:
        generator.manual_seed(step_seed(recipe, step, runtime.rank))
        return augment_batch(x, config, generator)

    return augment


def make_outliers(recipe: Recipe, runtime: Runtime):
    """With outlier exposure, a function giving each step half a batch of non-digits, drawn
    (seeded per step, like augmentation) from a pool generated once."""
    if recipe.outlier_exposure == 0:
        return None
    from ..images.synthetic import outlier_pool  # only runs with outlier exposure need it

    pool = torch.from_numpy(outlier_pool(OUTLIER_POOL, recipe.seed + 10_000))[:, None]
    pool = pool.to(runtime.device)
    generator = torch.Generator()

    def outliers(step: int) -> torch.Tensor:
        generator.manual_seed(step_seed(recipe, step, runtime.rank))
        idx = torch.randint(len(pool), (max(1, recipe.batch_size // 2 // runtime.world_size),),
                            generator=generator).to(runtime.device)
        return runtime.to_batch(as_input(pool[idx]))

    return outliers


OUTLIER_POOL = 12_000  # non-digits generated for outlier exposure (about 40 s)


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Ctrl-C waits for the block's end: the checkpoint, its log and what the run says it saved
    stay in step (kill -9 cannot be deferred: `--resume` rebuilds the log)."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    caught = []
    signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        previous(*caught[0])  # Python's own handler raises KeyboardInterrupt


def write_epoch(out: Path, model: nn.Module, optimizer: Optimizer, recipe: Recipe,
                data: Dataset, history: list[dict[str, Any]]) -> Path:
    path = out / CHECKPOINT_NAME
    meta = {"recipe": recipe.to_dict(), "dataset": data.name, "checksums": data.checksums,
            "classes": list(data.classes), "train_size": len(data.train),
            "epoch": history[-1]["epoch"],
            "step": history[-1]["step"],
            "metrics": history[-1], "history": history}
    try:  # checked as the readers will check it: a diverged run's weights are refused here
        raw = encode_checkpoint(model, meta, optimizer, torch.get_rng_state())
    except MnistCnnError as e:
        raise Diverged(str(e)) from None
    write_atomically(path, raw)
    write_metrics(out, history)
    return path


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """The log, rewritten whole (it is small) so that it always matches the checkpoint."""
    write_atomically(out / METRICS_NAME, "".join(json.dumps(r) + "\n" for r in history).encode())


def resume_from(out: Path | None, model: nn.Module, optimizer: Optimizer,
                recipe: Recipe, data: Dataset, log: Callable[[str], None],
                runtime: Runtime) -> tuple[int, list[dict[str, Any]]]:
    raw = None if out is None else distributed.read_on_rank0(out / CHECKPOINT_NAME, runtime,
                                                             read_bytes)
    if out is None or raw is None:  # under torchrun every rank gets rank 0's file: all stop alike
        raise MnistCnnError(f"--resume: no {CHECKPOINT_NAME} in {out} to resume from")
    path = out / CHECKPOINT_NAME
    tensors, meta = parse_checkpoint(raw, path)  # checked as a whole, against the network too
    step = check_resumable(meta.recipe, recipe, data, meta, str(path))
    load_weights(model, tensors, str(path))
    load_optimizer_state(optimizer, tensors, meta, str(path))
    if RNG_KEY in tensors:
        torch.set_rng_state(tensors[RNG_KEY])
    history: list[dict[str, Any]] = [dict(r) for r in meta.history]
    if runtime.is_main:  # a kill between the checkpoint's write and its log's lost the log
        write_metrics(out, history)
    log(f"resuming {path} after epoch {meta.epoch} (step {meta.step})")
    return step, history
