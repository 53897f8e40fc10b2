"""The `mnist-cnn` command, in-process (and once as a real process for the exit status)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_main

from mnist_cnn.cli import build_parser, main, recipe_from_args

REPO = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(r"Epoch: \d{4} cost = \d+\.\d{9}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_data_dir):
    """A few dozen steps of the simple network on the real MNIST, through the command."""
    out = tmp_path_factory.mktemp("cli") / "run"
    code, printed, errors = run_main(
        ["train", "--model", "simple", "--epochs", "0.02", "--out", str(out), "--no-progress",
         "--data-dir", str(mnist_data_dir), "--device", "cpu", "--threads", "1"])
    return code, printed, errors, out


def test_summary_prints_the_lecture_shapes(capsys):
    assert main(["summary", "--model", "simple"]) == 0
    printed = capsys.readouterr().out
    assert "(?, 14, 14, 32)" in printed
    assert "(?, 7, 7, 64)" in printed
    assert "(?, 3136)" in printed
    assert "50,090" in printed


def test_summary_without_a_model_prints_the_lectures_two_networks(capsys):
    assert main(["summary"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("model simple: the lecture's simple CNN")
    assert "\nmodel deep: the lecture's deep CNN" in printed
    assert "(?, 7, 7, 64)" in printed and "(?, 4, 4, 128)" in printed


def test_models_lists_both_networks(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_name = {line.split()[0]: line for line in lines if not line.startswith(" ")}
    assert "50,090 parameters" in by_name["simple"]
    assert "1,379,333 parameters" in by_name["deep"]


def test_models_gives_the_measured_accuracy_of_each(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    accuracy = {name.split()[0]: line.split("test accuracy ")[1]
                for name, line in zip(lines[::2], lines[1::2])}
    assert accuracy["best"] == "99.72% (mean of 3 seeds)"  # as docs/measurements.md has it
    assert accuracy["simple"].startswith("98.77%") and accuracy["deep"].startswith("99.32%")


def test_data_info_prints_counts_and_checksums(capsys, mnist_data_dir):
    assert main(["data", "info", "--data-dir", str(mnist_data_dir)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^train\s+55000 images", printed, re.M)
    assert re.search(r"^val\s+5000 images", printed, re.M)
    assert re.search(r"^test\s+10000 images", printed, re.M)
    assert "[980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]" in printed
    assert printed.count("(verified)") == 4
    assert str(mnist_data_dir) in printed


def test_data_info_on_an_empty_folder_is_a_one_line_error(capsys, tmp_path):
    assert main(["data", "info", "--data-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("mnist-cnn: error: ")
    assert str(tmp_path) in captured.err
    assert captured.err.count("\n") == 1


def test_train_prints_the_lecture_log(trained):
    code, printed, errors, out = trained
    assert code == 0, errors
    epoch_lines = [line for line in printed.splitlines() if line.startswith("Epoch: ")]
    assert len(epoch_lines) == 1
    assert EPOCH_LINE.match(epoch_lines[0])
    assert epoch_lines[0].startswith("Epoch: 0001 cost = ")
    assert "Learning started." in printed
    assert "Learning Finished!" in printed
    assert re.search(r"^Accuracy: 0\.\d{4} on the 10000 test images$", printed, re.M)


def test_train_names_the_precision_it_trains_in(mnist_data_dir, tmp_path):
    # bf16 asked for on a CPU without native bfloat16 (emulated, slower) trains in fp32 and says
    # so, in the note and in the line that starts the run
    import torch

    from mnist_cnn.runtime.device import bf16_supported

    code, printed, errors = run_main(
        ["train", "--model", "simple", "--epochs", "0.01", "--precision", "bf16", "--out",
         str(tmp_path / "run"), "--no-progress", "--data-dir", str(mnist_data_dir),
         "--device", "cpu", "--threads", "1"])
    assert code == 0, errors
    used = "bf16" if bf16_supported(torch.device("cpu")) else "fp32"
    assert re.search(rf"^training simple on mnist .* on cpu, {used}; ", printed, re.M), printed
    assert ("using fp32" in errors) == (used == "fp32")


def test_train_writes_the_run_folder(trained):
    code, _, _, out = trained
    assert code == 0
    assert (out / "last.safetensors").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["count"] == 10_000
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_evaluate_prints_the_confusion_matrix(trained, mnist_data_dir, capsys):
    out = trained[3]
    checkpoint = out / "last.safetensors"
    code = main(["evaluate", str(checkpoint), "--data-dir", str(mnist_data_dir),
                 "--batch-size", "500", "--device", "cpu", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"{checkpoint}: simple after epoch 1" in captured.out
    assert "in batches of 500" in captured.out
    assert "confusion matrix (rows: true, columns: predicted):" in captured.out
    accuracy = json.loads((out / "test_metrics.json").read_text())["accuracy"]
    assert f"Accuracy: {accuracy:.4f} (10000 images" in captured.out


def test_evaluate_shows_chosen_digits(trained, mnist_data_dir, capsys):
    # the run's folder (what train names at its start) stands for its checkpoint
    code = main(["evaluate", str(trained[3]), "--data-dir",
                 str(mnist_data_dir), "--show", "2", "--seed", "4", "--device", "cpu",
                 "--threads", "1"])
    printed = capsys.readouterr().out
    assert code == 0
    shown = re.findall(r"^test image #(\d+): label (\d), prediction (\d)", printed, re.M)
    assert len(shown) == 2
    art = printed.split("test image #")[1].splitlines()[1:29]
    assert {len(line) for line in art} == {56}


def test_train_with_an_invalid_flag_value_is_a_one_line_error(capsys):
    assert main(["train", "--model", "simple", "--dropout", "1.5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mnist-cnn: error: recipe for simple: dropout must be in [0, 1)")


def test_bad_checkpoint_path_in_process(capsys, tmp_path):
    missing = tmp_path / "nope.safetensors"
    assert main(["evaluate", str(missing), "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"mnist-cnn: error: {missing}: no such checkpoint file\n"


def test_bad_checkpoint_exit_status_of_the_installed_command(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"definitely not a checkpoint")
    command = Path(sys.executable).parent / "mnist-cnn"
    if not command.exists():
        command = REPO / ".venv" / "bin" / "mnist-cnn"
    result = subprocess.run([str(command), "evaluate", str(bad), "--device", "cpu"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("mnist-cnn: error: ")
    assert "not a readable checkpoint" in result.stderr
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_recipe_follows_the_dataset_and_the_flags():
    def recipe(*argv):
        return recipe_from_args(build_parser().parse_args(["train", "--model", "fast", *argv]))

    assert recipe().model_args == {"crop": 24, "standardize": True}
    assert recipe("--dataset", "fashion-mnist").model_args == {"crop": 28, "standardize": True}
    assert recipe("--dataset", "fashion-mnist", "--lr", "0.01").lr == 0.01


def test_module_entry_point_exits_cleanly():
    result = subprocess.run([sys.executable, "-m", "mnist_cnn", "models"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("simple")


def test_unknown_arguments_are_still_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "extra"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: extra" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "m.safetensors", "a.png", "--bogus", "b.png"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_env_prints_the_cpu_and_versions_behind_the_figures():
    import torch

    code, printed, _ = run_main(["env"])
    assert code == 0
    assert f"torch:                {torch.__version__}" in printed
    assert re.search(r"^cpu features: ", printed, re.MULTILINE)
    code, printed, _ = run_main(["env", "--json"])
    assert code == 0 and json.loads(printed)["cores available"] >= 1


# --------------------------------------------------------------------------------------------
# hostile arguments and paths: usage errors from the parser, one-line errors before the work


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--model", "simple", "--epochs", "inf"], "argument --epochs: inf is not a finite number"),
    (["train", "--model", "simple", "--epochs", "0"],
     "argument --epochs: 0 is out of range: must be above 0"),
    (["train", "--model", "simple", "--lr", "nan"], "argument --lr: nan is not a finite number"),
    (["train", "--model", "simple", "--threads", "-1"],
     "argument --threads: -1 is out of range: must be from 1 to 1024"),
    (["train", "--model", "simple", "--weight-decay", "-1"],
     "argument --weight-decay: -1 is out of range: must be at least 0"),
    (["train", "--model", "simple", "--seed", "7" * 70],
     f"argument --seed: {'7' * 70} is out of range: must be from 0 to 4294967295"),
    (["train", "--model", "simple", "--batch-size", "ten"],
     "argument --batch-size: 'ten' is not a whole number"),
    (["train", "--model", "simple", "--resume", "--overwrite"],
     "argument --overwrite: not allowed with argument --resume"),
    (["train", "--model", "simple", "--validation", "-5"],
     "argument --validation: -5 is out of range: must be at least 0"),
    (["ensemble", "train", "--model", "simple", "--members", "0"],
     "argument --members: 0 is out of range: must be at least 1"),
    (["evaluate", "m.safetensors", "--batch-size", "0"],
     "argument --batch-size: 0 is out of range: must be at least 1"),
    (["serve", "m.safetensors", "--port", "70000"],
     "argument --port: 70000 is out of range: must be from 1 to 65535"),
    (["export", "m.safetensors", "--onnx", "m.onnx", "--opset", "99"],
     "argument --opset: 99 is out of range: must be from 9 to 20"),
])
def test_bad_argument_values_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].endswith(f"error: {message}")
    assert "Traceback" not in err


def test_train_refuses_another_runs_folder_before_training(trained, mnist_data_dir, capsys):
    _, _, _, out = trained
    before = (out / "last.safetensors").read_bytes()
    argv = ["train", "--model", "simple", "--epochs", "0.02", "--out", str(out), "--no-progress",
            "--data-dir", str(mnist_data_dir), "--device", "cpu", "--threads", "1"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err == (f"mnist-cnn: error: {out} already holds a run (last.safetensors); "
                            "continue it with --resume, replace it with --overwrite, or choose "
                            "another --out\n")
    assert "Epoch:" not in captured.out
    assert (out / "last.safetensors").read_bytes() == before


def test_train_into_an_unusable_out_fails_before_training(mnist_data_dir, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    argv = ["train", "--model", "simple", "--out", str(a_file / "run"), "--no-progress",
            "--data-dir", str(mnist_data_dir), "--device", "cpu", "--threads", "1"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err == (f"mnist-cnn: error: {a_file / 'run'}: cannot create the output "
                            "folder (Not a directory)\n")
    assert "Epoch:" not in captured.out


def test_export_checks_its_destination_before_the_slow_work(trained, tmp_path, capsys,
                                                            monkeypatch):
    from mnist_cnn.inference import export

    calls = []
    monkeypatch.setattr(export, "onnx_bytes", lambda *args: calls.append(args) or b"")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    checkpoint = str(trained[3] / "last.safetensors")
    for onnx, problem in ((a_file / "m.onnx", f"{a_file}: the folder of --onnx is not a folder"),
                          (tmp_path, f"{tmp_path}: is a folder; --onnx names the file to write")):
        assert main(["export", checkpoint, "--onnx", str(onnx), "--threads", "1"]) == 1
        assert capsys.readouterr().err.startswith(f"mnist-cnn: error: {problem}")
    assert calls == []


def test_a_gzip_bomb_in_the_data_folder_is_a_quick_one_line_error(mnist_gz_dir, tmp_path, capsys):
    import gzip
    import shutil
    import time

    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(mnist_gz_dir / f"{name}.gz", tmp_path)
    zeros = gzip.compress(bytes(16 * 2**20))
    header = gzip.compress(bytes([0, 0, 8, 1]) + (60_000).to_bytes(4, "big"))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(header + zeros * 256)  # 4 GiB
    started = time.perf_counter()
    assert main(["data", "info", "--data-dir", str(tmp_path)]) == 1
    assert time.perf_counter() - started < 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "more than 60,008 bytes" in err


def test_an_unknown_augmentation_preset_is_a_usage_error_before_any_data_loads(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--model", "fast", "--augment", "strong"])
    assert exit_.value.code == 2
    assert "invalid choice: 'strong'" in capsys.readouterr().err
    args = build_parser().parse_args(["train", "--model", "fast", "--augment"])
    assert args.augment == "standard"


def test_holding_out_every_training_image_is_a_one_line_error(mnist_data_dir, tmp_path, capsys):
    argv = ["train", "--model", "simple", "--validation", "60000", "--out", str(tmp_path / "run"),
            "--no-progress", "--data-dir", str(mnist_data_dir), "--device", "cpu", "--threads", "1"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err == ("mnist-cnn: error: mnist: cannot hold out 60,000 of its 60,000 "
                            "training images for validation\n")
    assert not (tmp_path / "run").exists()


def modules_loaded_by(argv: list[str]) -> set[str]:
    """The modules a command imports, run in a fresh interpreter."""
    code = ("import sys; from mnist_cnn.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print('MODULES', *sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.rsplit("MODULES", 1)[1].split())


@pytest.mark.parametrize("argv", [["--help"], ["models"], ["train", "--help"]])
def test_commands_that_run_no_network_do_not_import_torch(argv):
    assert "torch" not in modules_loaded_by(argv)  # it takes seconds to import on a small CPU


def test_predict_imports_only_what_it_needs(tmp_path):
    from PIL import Image, ImageDraw

    photo = Image.new("L", (100, 120), 255)
    ImageDraw.Draw(photo).line([(50, 15), (50, 105)], fill=0, width=10)
    photo.save(tmp_path / "one.png")
    loaded = modules_loaded_by(["predict", str(tmp_path / "one.png"), "--threads", "1"])
    slow = {"scipy.stats", "matplotlib", "fastapi", "onnx", "onnxruntime", "torch._dynamo", "sympy"}
    assert not loaded & slow


def test_training_does_not_import_the_compiler(mnist_data_dir, tmp_path):
    # torch.optim's optimizers import torch._dynamo (over a second) on first use; ours do not
    loaded = modules_loaded_by(["train", "--model", "fast", "--epochs", "0.01", "--no-progress",
                                "--data-dir", str(mnist_data_dir), "--out", str(tmp_path / "run"),
                                "--threads", "1"])
    assert "mnist_cnn.training.loop" in loaded
    assert not loaded & {"torch._dynamo", "sympy"}


def test_a_diverging_run_exits_non_zero_saying_what_to_change(mnist_data_dir, tmp_path):
    """Once: "cost = nan", "Accuracy: 0.0980", exit 0, and a last.safetensors nothing could load."""
    code, printed, errors = run_main(
        ["train", "--model", "fast", "--optimizer", "sgd", "--lr", "1e6", "--epochs", "1",
         "--out", str(tmp_path / "run"), "--no-progress", "--data-dir", str(mnist_data_dir),
         "--device", "cpu", "--threads", "1"])
    assert code == 1
    last = errors.splitlines()[-1]
    assert last.startswith("mnist-cnn: error: training diverged in epoch 1: the loss is nan")
    assert last.endswith("lower the learning rate (--lr, now 1e+06); no checkpoint was written")
    assert "Accuracy" not in printed and "Traceback" not in errors
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_a_reader_that_stops_early_is_no_traceback():
    """`mnist-cnn models | head -1`: once a BrokenPipeError traceback."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    done = subprocess.run([sys.executable, "-m", "mnist_cnn", "models"], stdout=write_end,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")  # as a command killed by SIGPIPE
