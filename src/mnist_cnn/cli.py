"""The `mnist-cnn` command: one sub-command per capability, each a thin layer over the library."""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .data import sources
from .errors import Interrupted, MnistCnnError

# Only what builds the parser is imported here. Each command imports the rest when it runs:
# torch alone takes seconds to import on a small CPU, and `--help` or `models` need none of it.
from .models import catalog
from .models.recipes import OPTIMIZERS, PRECISIONS, SCHEDULES, SEEDS
from .server import limits as server_limits

if TYPE_CHECKING:
    import torch

    from .data.dataset import Dataset, Split
    from .inference.ensemble import EnsembleReport
    from .inference.evaluation import Metrics
    from .models.checkpoint import CheckpointMeta
    from .models.recipes import Recipe
    from .runtime.device import Runtime

# --------------------------------------------------------------------------------------------
# argument types: a bad value is argparse's usage error (exit 2) naming the option, never a
# traceback from deep inside torch


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in low..high (high None: no upper bound)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {bounds}")
        return value

    return parse


def real_number(low: float, include_low: bool = True) -> Callable[[str], float]:
    """An argparse type: a finite float, at least `low` (or above it, if not `include_low`)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if value < low or (value == low and not include_low):
            raise argparse.ArgumentTypeError(
                f"{text} is out of range: must be {'at least' if include_low else 'above'} {low:g}")
        return value

    return parse


POSITIVE = whole_number(1)
COUNT = whole_number(0)
SEED = whole_number(0, SEEDS - 1)
THREADS = whole_number(1, 1024)
PORT = whole_number(1, 65535)
OPSET = whole_number(9, 20)  # what torch's TorchScript ONNX exporter supports


# --------------------------------------------------------------------------------------------
# arguments that several commands share, each declared once


def add_data_args(p: argparse.ArgumentParser, dataset_default: str | None = "mnist") -> None:
    p.add_argument("--dataset", default=dataset_default, choices=sorted(sources.DATASETS),
                   help="dataset name (default: %(default)s)")
    p.add_argument("--data-dir", help="folder holding the four IDX files (raw or .gz); "
                   "otherwise $MNIST_DATA_DIR, the cache, or a download")


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=THREADS, help="a fixed number of CPU threads (default: the "
                   "cores available, fewer while other processes keep some busy)")


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    add_threads_arg(p)


def add_evaluation_args(p: argparse.ArgumentParser) -> None:
    """The flags of a command that runs trained networks over a test set."""
    p.add_argument("--batch-size", type=POSITIVE, default=1000,
                   help="images per batch; memory is bounded by it (default: %(default)s)")
    add_data_args(p, dataset_default=None)  # default: the dataset the checkpoint was trained on
    add_runtime_args(p)


def add_recipe_args(p: argparse.ArgumentParser, model_required: bool = True) -> None:
    """A training command's flags: each overrides one field of the network's default recipe."""
    p.add_argument("--model", required=model_required, choices=sorted(catalog.NETWORKS))
    p.add_argument("--epochs", type=real_number(0, include_low=False))
    p.add_argument("--batch-size", type=POSITIVE)
    p.add_argument("--lr", type=real_number(0, include_low=False), help="(peak) learning rate")
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--weight-decay", type=real_number(0))
    p.add_argument("--schedule", choices=SCHEDULES)
    p.add_argument("--label-smoothing", type=real_number(0))
    p.add_argument("--dropout", type=float, help="drop probability (1 - keep_prob)")
    p.add_argument("--augment", nargs="?", const="standard", choices=catalog.AUGMENT_PRESETS,
                   help="augment training batches with a preset (alone: standard)")
    p.add_argument("--precision", choices=PRECISIONS)
    p.add_argument("--seed", type=SEED)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--validation", type=COUNT, default=sources.VALIDATION_SIZE, metavar="N",
                   help="training images held out to validate every epoch (default: "
                   "%(default)s, the lecture's split); 0 trains on all of them, once a recipe "
                   "has been chosen, and validates nothing")
    add_data_args(p)
    add_runtime_args(p)


def recipe_overrides(args: argparse.Namespace) -> dict:
    return {field: getattr(args, field) for field in
            ("epochs", "batch_size", "lr", "seed", "dropout", "schedule", "precision",
             "augment", "optimizer", "weight_decay", "label_smoothing")
            if getattr(args, field, None) is not None}


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    from .models.registry import recipe_for

    return recipe_for(args.model, args.dataset).replace(**recipe_overrides(args))


def data_for(args: argparse.Namespace, meta: CheckpointMeta) -> Dataset:
    """The dataset named by --dataset, else the one the checkpoint was trained on."""
    from .data.dataset import load_dataset

    return load_dataset(args.dataset or meta.dataset or "mnist", args.data_dir)


# --------------------------------------------------------------------------------------------
# Each command: its arguments, then what it does. build_parser() at the end lists them.


def data_command(sub) -> None:
    p = sub.add_parser("data", help="fetch or describe a dataset")
    p.add_argument("action", choices=["fetch", "info"])
    add_data_args(p)
    p.set_defaults(func=cmd_data)


def cmd_data(args: argparse.Namespace) -> None:
    import torch

    from .data.dataset import load_dataset

    if args.action == "fetch":
        if not (args.data_dir or os.environ.get(sources.env_var(args.dataset))):
            for name in sources.repair_cache(args.dataset):  # only a new download mends them
                print(f"{args.dataset}: {name} in the cache fails its checksum; fetching it again")
        directory = sources.locate(args.dataset, args.data_dir, download=True)
        print(f"{args.dataset}: available in {directory}")
    ds = load_dataset(args.dataset, args.data_dir, download=args.action == "fetch")
    print(f"dataset   {ds.name}\nsource    {ds.source}")
    for name, split in (("train", ds.train), ("val", ds.val), ("test", ds.test)):
        counts = torch.bincount(split.labels, minlength=len(ds.classes)).tolist()
        print(f"{name:<9} {len(split):>6} images  per class {counts}")
    for stem, digest in ds.checksums.items():
        print(f"sha256    {stem:<24} {digest}  (verified)")


def env_command(sub) -> None:
    p = sub.add_parser("env", help="what decides the figures here: CPU, instruction sets, cores, "
                       "torch and oneDNN versions, GPUs")
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    p.set_defaults(func=cmd_env)


def cmd_env(args: argparse.Namespace) -> None:
    from .runtime.environment import describe_environment, format_environment

    env = describe_environment()
    print(json.dumps(env, indent=2) if args.json else format_environment(env))


def models_command(sub) -> None:
    p = sub.add_parser("models", help="list the registered networks")
    p.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> None:
    width = max(len(name) for name in catalog.NETWORKS)
    for name, network in catalog.NETWORKS.items():
        print(f"{name:<{width}} {network.parameters:>10,} parameters  {network.description}")
        print(f"{'':<{width}} {'':>10}   test accuracy {network.accuracy}")


def summary_command(sub) -> None:
    p = sub.add_parser("summary", help="print each layer's output shape and parameter count "
                       "(default: the lecture's two networks)")
    p.add_argument("--model", choices=sorted(catalog.NETWORKS))
    p.set_defaults(func=cmd_summary)


def cmd_summary(args: argparse.Namespace) -> None:
    from .models.registry import build_model
    from .models.summary import summary

    for n, name in enumerate([args.model] if args.model else ["simple", "deep"]):
        print(f"{chr(10) if n else ''}model {name}: {catalog.NETWORKS[name].description}")
        print(summary(build_model(name)))


# --------------------------------------------------------------------------------------------
# train


def train_command(sub) -> None:
    p = sub.add_parser("train", help="train a network (defaults: its recipe)")
    add_recipe_args(p)
    p.add_argument("--out", help="run directory (default: runs/MODEL)")
    claim = p.add_mutually_exclusive_group()
    claim.add_argument("--resume", action="store_true", help="continue the run in --out")
    claim.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --out (refused otherwise)")
    p.add_argument("--show", type=COUNT, default=0, help="show N test digits with predictions")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> None:
    from .runtime import distributed

    recipe = recipe_from_args(args)
    try:
        runtime, data = start_runtime_and_data(args, recipe.precision)
    except KeyboardInterrupt:
        raise Interrupted("before training started; nothing was saved") from None
    try:
        with distributed.peers_lost_as_error(runtime):
            train_and_test(args, recipe, runtime, data)
            # the ranks leave together: one tearing its connections down while rank 0 still
            # tests could crash at exit (seen once, as an abort in gloo)
            distributed.barrier(runtime)
    finally:
        distributed.stop()


def start_runtime_and_data(args: argparse.Namespace, precision: str) -> tuple[Runtime, Dataset]:
    """The runtime and data of a training command."""
    from .data.dataset import load_dataset
    from .runtime.device import setup

    runtime = setup(args.device, precision, args.threads, tune_allocator=True, distributed=True)
    return runtime, load_dataset(args.dataset, args.data_dir, val_size=args.validation)


def train_and_test(args: argparse.Namespace, recipe: Recipe, runtime: Runtime,
                   data: Dataset) -> None:
    from .inference.evaluation import evaluate
    from .models.registry import build_model
    from .training.loop import CHECKPOINT_NAME, TrainingInterrupted, train

    out = Path(args.out or f"runs/{recipe.model}")
    if runtime.is_main:  # under torchrun, rank 0 speaks for the group
        print(f"training {recipe.model} on {data.name} ({len(data.train)} train / "
              f"{len(data.val)} validation images) on {runtime.device}, {runtime.precision}; "
              f"checkpoints in {out}")
        print("Learning started. It takes sometime.")
    model = build_model(recipe)
    try:
        result = train(model, data, recipe, runtime, out, resume=args.resume,
                       progress=not args.no_progress, overwrite=args.overwrite)
    except TrainingInterrupted as e:
        if e.checkpoint is None:
            earlier = (f"; the run {out} held before is as it was"
                       if (out / CHECKPOINT_NAME).is_file() else "")
            raise Interrupted(f"before the first epoch ended; nothing was saved{earlier}") \
                from None
        if e.epoch is None:
            raise Interrupted(f"{e.checkpoint} is as it was") from None
        again = ("the same command" if args.resume else "the same command with --resume"
                 + (" instead of --overwrite" if args.overwrite else ""))
        raise Interrupted(f"{e.checkpoint} holds epoch {e.epoch}; {again} continues from there"
                          ) from None
    if not runtime.is_main:
        return
    print(f"Learning Finished! ({result.train_seconds:.1f} s of training)")
    try:
        test = check_finite(evaluate(model, data.test, recipe.eval_batch_size, runtime),
                            result.checkpoint or recipe.model)
        print(f"Accuracy: {test.accuracy:.4f} on the {test.count} test images")
        if result.checkpoint is not None:
            save_test_metrics(result.checkpoint, test.summary())
    except KeyboardInterrupt:
        raise Interrupted(f"training had finished ({result.checkpoint} holds epoch "
                          f"{result.epoch}); its test accuracy was not measured") from None
    show_predictions(model, data.test, data.classes, args.show, recipe.seed, runtime)


def save_test_metrics(checkpoint: Path, metrics: dict) -> None:
    from .files import write_atomically

    write_atomically(checkpoint.parent / "test_metrics.json", (json.dumps(metrics) + "\n").encode())


def show_predictions(model: torch.nn.Module, split: Split, classes: tuple[str, ...],
                     count: int, seed: int, runtime) -> None:
    """Random test digits drawn as text, with label and prediction (as the lecture does)."""
    if count <= 0:
        return
    import torch

    from .inference.evaluation import ascii_digit, predict_proba

    picks = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:count]
    probs = predict_proba(model, split.images[picks], runtime=runtime)
    for i, p in zip(picks.tolist(), probs):
        label, guess = int(split.labels[i]), int(p.argmax())
        mark = "right" if label == guess else "WRONG"
        print(f"\ntest image #{i}: label {classes[label]}, prediction {classes[guess]} "
              f"({float(p.max()):.1%}) {mark}")
        print(ascii_digit(split.images[i]))


# --------------------------------------------------------------------------------------------
# ensemble


def ensemble_command(sub) -> None:
    p = sub.add_parser("ensemble", help="train or evaluate an ensemble of networks")
    ens = p.add_subparsers(dest="action", required=True)
    q = ens.add_parser("train", help="train N members with seeds S, S+1, ..., or the members "
                       "listed by --member (resumable); choose them on the validation split")
    add_recipe_args(q, model_required=False)
    q.add_argument("--members", type=POSITIVE, help="with --model: this many seeds of it")
    q.add_argument("--member", action="append", metavar="MODEL[:AUGMENT[:SEED]]",
                   help="one member (repeat the option), e.g. best:elastic or wide:standard:7; "
                   "the other flags apply to every member; seeds default to --seed + position")
    q.add_argument("--out", help="ensemble directory (default: runs/MODEL-ensemble, or "
                   "runs/ensemble with --member)")
    q.add_argument("--overwrite", action="store_true",
                   help="retrain every member (by default finished members are kept and an "
                   "interrupted one resumes)")
    q.set_defaults(func=cmd_ensemble_train)
    q = ens.add_parser("evaluate", help="each member's and the averaged ensemble's accuracy")
    q.add_argument("checkpoints", nargs="+")
    add_evaluation_args(q)
    q.set_defaults(func=cmd_ensemble_evaluate)


def cmd_ensemble_train(args: argparse.Namespace) -> None:
    from .inference.ensemble import evaluate_ensemble, format_verdicts, select_members
    from .runtime import distributed
    from .training.ensemble import train_recipes
    from .training.loop import TrainingInterrupted

    recipes, names, out = ensemble_recipes(args)
    runtime, data = start_runtime_and_data(args, recipes[0].precision)
    try:
        with distributed.peers_lost_as_error(runtime):
            paths = train_recipes(recipes, data, runtime, out, not args.no_progress,
                                  overwrite=args.overwrite, names=names)
    except TrainingInterrupted as e:
        saved = (f"{e.checkpoint} holds epoch {e.epoch}" if e.epoch is not None
                 else "the member in training saved nothing")
        again = "the same command" + (" without --overwrite" if args.overwrite else "")
        raise Interrupted(f"{saved}; {again} continues from there, keeping the members that "
                          "finished") from None
    finally:
        distributed.stop()
    if not runtime.is_main:
        return
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:  # trained by another machine into its own folder
        raise MnistCnnError(f"{', '.join(missing)}: not here; under torchrun on several machines, "
                            "--out must be a folder all of them share")
    batch = recipes[0].eval_batch_size
    if len(paths) > 1 and len(data.val):  # chosen on the validation split, reported on test
        verdicts = select_members(paths, data.val, batch, runtime)
        print(format_verdicts([p.parent.name for p in paths], verdicts))
        paths = [p for p, v in zip(paths, verdicts) if v.kept]
    print(format_ensemble(evaluate_ensemble(paths, data.test, batch, runtime)))


def ensemble_recipes(args: argparse.Namespace) -> tuple[list[Recipe], list[str] | None, Path]:
    """The members' recipes, folder names and the ensemble folder: --model with --members N
    (seeds S, S+1, ... in member-K/), or a --member spec per member."""
    from .training.ensemble import member_recipes, seed_members
    if args.member:
        if args.model or args.members:
            raise MnistCnnError("--member lists the members: give it without --model and --members")
        overrides = {k: v for k, v in recipe_overrides(args).items() if k != "seed"}
        recipes = member_recipes(args.member, args.seed or 0, args.dataset, **overrides)
        if len({r.precision for r in recipes}) > 1:
            raise MnistCnnError("the members' recipes differ in precision: choose one with "
                                "--precision")
        return recipes, None, Path(args.out or "runs/ensemble")
    if not (args.model and args.members):
        raise MnistCnnError("give --model and --members N, or --member MODEL[:AUGMENT[:SEED]] "
                            "once per member")
    recipe = recipe_from_args(args)
    recipes, names = seed_members(recipe, args.members)
    return recipes, names, Path(args.out or f"runs/{recipe.model}-ensemble")


def cmd_ensemble_evaluate(args: argparse.Namespace) -> None:
    from .inference.ensemble import evaluate_ensemble
    from .models.checkpoint import read_checkpoint
    from .runtime.device import setup

    runtime = setup(args.device, "fp32", args.threads)
    _, meta = read_checkpoint(args.checkpoints[0])  # its dataset; the members load below
    data = data_for(args, meta)
    print(format_ensemble(evaluate_ensemble(args.checkpoints, data.test, args.batch_size, runtime)))


def format_ensemble(report: EnsembleReport) -> str:
    lines = [f"member {path}: accuracy {m.accuracy:.4f}" for path, m in report.members]
    mean = sum(m.accuracy for _, m in report.members) / len(report.members)
    lines.append(f"members' mean accuracy {mean:.4f}")
    lines.append(f"Ensemble accuracy ({len(report.members)} members, averaged softmax): "
                 f"{report.ensemble.accuracy:.4f} ({report.ensemble.count} test images)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# evaluate


def evaluate_command(sub) -> None:
    p = sub.add_parser("evaluate", help="test accuracy, per-class accuracy, confusion matrix")
    p.add_argument("checkpoint", nargs="?",
                   help="a .safetensors checkpoint or a training run's folder (default: the "
                        "model shipped with mnist-cnn)")
    p.add_argument("--show", type=COUNT, default=1, help="random test digits to show")
    p.add_argument("--seed", type=SEED, default=0, help="which random digits to show")
    add_evaluation_args(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .inference.evaluation import evaluate, format_metrics
    from .models.checkpoint import load_checkpoint, pretrained_path
    from .runtime.device import setup

    runtime = setup(args.device, "fp32", args.threads)
    path = args.checkpoint or pretrained_path()
    name = args.checkpoint or "the model shipped with mnist-cnn"
    model, meta = load_checkpoint(path, device=runtime.device)
    data = data_for(args, meta)
    if data.checksums != meta.checksums and args.dataset is None:
        print(f"note: {name} was trained on other {data.name} files", file=sys.stderr)
    metrics = check_finite(evaluate(model, data.test, args.batch_size, runtime), name)
    print(f"{name}: {meta.recipe.model} {meta.trained_for()}, "
          f"evaluated on {data.name} test in batches of {args.batch_size}")
    print(format_metrics(metrics, data.classes))
    show_predictions(model, data.test, data.classes, args.show, args.seed, runtime)


def check_finite(metrics: Metrics, source: str | Path) -> Metrics:
    """Weights inside the readers' bounds can still overflow (a loss of NaN is no answer)."""
    from .inference.ensemble import NOT_FINITE

    if not math.isfinite(metrics.loss):
        raise MnistCnnError(f"{source}: {NOT_FINITE}")
    return metrics


# --------------------------------------------------------------------------------------------
# predict, export, plot, serve


def predict_command(sub) -> None:
    p = sub.add_parser("predict", help="read digits from photos (one checkpoint, or several: an "
                       "ensemble)")
    p.add_argument("inputs", nargs="+", metavar="CHECKPOINT_OR_IMAGE",
                   help="checkpoints (*.safetensors, or a training run's folder; none: the model "
                   "shipped with mnist-cnn), "
                   "then image files or folders of images")
    p.add_argument("--top-k", type=int, default=3, help="classes to show per image "
                   "(default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    p.add_argument("--number", action="store_true", help="read each image as a row of digits "
                   "(a number): the digit string, each digit's probability and box")
    p.add_argument("--save-preprocessed", metavar="DIR",
                   help="also write each image as the network sees it (28x28 PNG) into DIR")
    add_runtime_args(p)
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> None:
    from .inference import predict
    from .runtime.device import setup

    checkpoints, images = predict.split_arguments(args.inputs)
    runtime = setup(args.device, "fp32", args.threads)
    predictor = predict.Predictor.load(checkpoints, runtime)
    results: Sequence[predict.Prediction | predict.NumberPrediction | predict.Failure]
    if args.number:
        if args.save_preprocessed:
            raise MnistCnnError("--save-preprocessed shows one digit's 28x28 image; it does not "
                                "apply to --number")
        results = predict.predict_numbers(predictor, images, args.top_k)
    else:
        results = predict.predict_images(predictor, images, args.top_k, args.save_preprocessed)
    failures = [r for r in results if isinstance(r, predict.Failure)]
    for result in results:  # in the order given; errors to stderr, so stdout stays clean
        failed = isinstance(result, predict.Failure)
        if failed or not args.json:
            print(predict.format_result(result), file=sys.stderr if failed else sys.stdout)
    if args.json:
        print(json.dumps(predict.as_json(results), indent=2))
    if failures:  # every other image is printed above; the exit status still tells
        raise MnistCnnError(f"{len(failures)} of {len(results)} images could not be read")


def export_command(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint as ONNX (softmax outputs) + JSON sidecar")
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by train, or its "
                   "run's folder")
    p.add_argument("--onnx", required=True, metavar="PATH", help="where to write the ONNX model")
    p.add_argument("--opset", type=OPSET, default=17, help="ONNX opset (default: %(default)s)")
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing ONNX Runtime with PyTorch on the test set")
    add_threads_arg(p)
    add_data_args(p, dataset_default=None)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> None:
    from .files import ensure_writable_folder
    from .inference import export  # imported here: onnx and onnxruntime load slowly
    from .models.checkpoint import checkpoint_file, load_checkpoint
    from .runtime.device import setup

    runtime = setup("cpu", "fp32", args.threads)
    checkpoint = checkpoint_file(args.checkpoint)
    model, meta = load_checkpoint(checkpoint, device=runtime.device)
    # checked before the slow export and parity check, which would otherwise be lost; the
    # checkpoint (weights and optimizer state) is larger than the ONNX file it becomes
    ensure_writable_folder(Path(args.onnx).parent, checkpoint.stat().st_size,
                           what="folder of --onnx")
    if Path(args.onnx).is_dir():
        raise MnistCnnError(f"{args.onnx}: is a folder; --onnx names the file to write")
    test = None if args.no_check else data_for(args, meta).test
    sidecar = export.export_checkpoint(model, meta, checkpoint, args.onnx, args.opset, test)
    size = Path(args.onnx).stat().st_size
    print(f"wrote {args.onnx} ({size / 1024:,.0f} KiB, opset {args.opset}) and {sidecar}")


def plot_command(sub) -> None:
    p = sub.add_parser("plot", help="draw training curves, confusion matrix, mistakes, filters, "
                       "feature maps (and a photo's preprocessing) as PNG files")
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by train, or its "
                   "run's folder")
    p.add_argument("--out", help="folder for the PNG files (default: plots/ beside the checkpoint)")
    p.add_argument("--image", metavar="PHOTO", help="also show how this photo is read")
    add_evaluation_args(p)
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> None:
    from .files import ensure_writable_folder
    from .images.preprocess import load_and_preprocess
    from .inference import plots  # imported here: matplotlib loads slowly
    from .models.checkpoint import checkpoint_file, load_checkpoint
    from .runtime.device import setup

    runtime = setup(args.device, "fp32", args.threads)
    checkpoint = checkpoint_file(args.checkpoint)
    model, meta = load_checkpoint(checkpoint, device=runtime.device)
    photo = load_and_preprocess(args.image) if args.image else None
    out = Path(args.out or checkpoint.parent / "plots")
    ensure_writable_folder(out, what="folder of the plots")  # before the slow drawing
    data = data_for(args, meta)
    for path in plots.write_report(model, meta, data.test, data.classes, out, runtime,
                                   args.batch_size, photo):
        print(f"wrote {path}")


def serve_command(sub) -> None:
    p = sub.add_parser("serve", help="a web page to draw digits on, and its JSON API")
    p.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT",
                   help="one checkpoint, or several: an ensemble (default: the model shipped "
                   "with mnist-cnn)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=PORT, default=8000, help="(default: %(default)s)")
    p.add_argument("--max-concurrent", type=int, default=server_limits.MAX_CONCURRENT,
                   help="uploads decoded and classified at once; more wait, then get 503 "
                   "(default: %(default)s)")
    p.add_argument("--queue-timeout", type=float, default=server_limits.QUEUE_TIMEOUT,
                   help="seconds an upload waits for its turn (default: %(default)s)")
    p.add_argument("--request-timeout", type=float, default=server_limits.REQUEST_TIMEOUT,
                   help="seconds a client has to send a request's headers, and again its body "
                   "(default: %(default)s)")
    p.add_argument("--max-pixels", type=int, default=server_limits.MAX_PIXELS,
                   help="pixels decoded per upload at most (default: %(default)s)")
    add_runtime_args(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn  # imported here: only this command serves

    from .models.checkpoint import pretrained_path
    from .runtime.device import setup
    from .server import create_app
    from .server.serving import server_config

    # one thread per upload by default: concurrent uploads are the parallelism, and a fixed count
    # keeps the thread choice out of the request threads
    runtime = setup(args.device, "fp32", args.threads or 1)
    app = create_app(args.checkpoints or [pretrained_path()], runtime, max_pixels=args.max_pixels,
                     max_concurrent=args.max_concurrent, queue_timeout=args.queue_timeout,
                     request_timeout=args.request_timeout)
    # flushed: a log that reads a pipe sees it while the server runs
    print(f"mnist-cnn: draw a digit at http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    try:
        uvicorn.Server(server_config(app, args.host, args.port, args.request_timeout)).run()
    except KeyboardInterrupt:  # uvicorn stops gracefully, then raises Ctrl-C again
        raise Interrupted("the server stopped") from None


# --------------------------------------------------------------------------------------------

COMMANDS = (data_command, env_command, models_command, summary_command, train_command,
            ensemble_command, evaluate_command, predict_command, plot_command, serve_command,
            export_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnist-cnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(sub)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse fills `predict`'s list of files once; files named after an option come back here
    if extra and args.command == "predict" and not any(e.startswith("-") for e in extra):
        args.inputs += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        args.func(args)
    except MnistCnnError as e:
        print(f"mnist-cnn: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C: one line, saying what was saved where that matters
        detail = f": {e}" if isinstance(e, Interrupted) else ""
        print(f"mnist-cnn: interrupted{detail}", file=sys.stderr)
        return 130
    return 0


def run() -> None:
    """The console command: main(), then a quick exit."""
    try:
        status = main()
        sys.stdout.flush()  # a pipe's buffered output fails here, not in the exit's flush
    except BrokenPipeError:  # `mnist-cnn ... | head`: the reader stopped early, no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # for the exit's flush
        status = 128 + signal.SIGPIPE  # what a command killed by SIGPIPE reports
    # the command is over, its line printed: a second Ctrl-C would only break the exit's cleanup
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Interpreter shutdown would run the cycle collector over the ~300k objects torch creates at
    # import, about half a second: a tenth of a `fast` training run. Frozen objects are skipped.
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    run()
