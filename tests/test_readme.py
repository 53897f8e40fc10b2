"""The README and the pages in docs/ as a user reads them: every command they show works as
written. Command lines are parsed by the command's own parser (nothing trains); the quick ones
run for real."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_main
from PIL import Image, ImageDraw

from mnist_cnn.cli import build_parser, parse_args, recipe_from_args

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
QUICK = {"env", "models", "summary", "predict"}  # seconds each: run, not just parsed


def shell_lines(page: Path) -> list[str]:
    """The command lines of a page's ```sh blocks: continuations joined, comments dropped."""
    blocks = re.findall(r"^```sh\n(.*?)^```", page.read_text(), re.MULTILINE | re.DOTALL)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                lines.append(shlex.join(words))
    return lines


def mnist_cnn_args(words: list[str]) -> list[str] | None:
    """The arguments of `mnist-cnn`, however the line calls it (None: it does not)."""
    if words[0] in ("mnist-cnn", ".venv/bin/mnist-cnn"):
        return words[1:]
    if words[0] == "torchrun" and "mnist_cnn" in words:
        return words[words.index("mnist_cnn") + 1:]
    return None


def check(line: str) -> list[str] | None:
    """Fails unless `line` is a command that works here; returns mnist-cnn's arguments if any."""
    words = shlex.split(line)
    args = mnist_cnn_args(words)
    if args is not None:
        try:
            parsed = parse_args(args)
        except SystemExit as e:  # argparse's usage error, or --help (status 0)
            assert e.code == 0, f"{line!r}: the command's parser refuses it"
            return None
        if parsed.command == "train":
            recipe_from_args(parsed)  # a recipe the flags make must be a valid one
        return args
    if words[0] == "make":
        makefile = (REPO / "Makefile").read_text()
        for target in (w for w in words[1:] if "=" not in w):
            assert re.search(rf"^{re.escape(target)}:", makefile, re.MULTILINE), \
                f"{line!r}: the Makefile has no target {target!r}"
    elif words[:2] == ["source", ".venv/bin/activate"]:
        assert (Path(sys.prefix) / "bin" / "activate").is_file()
    elif words[0] in (".venv/bin/python", ".venv-tf/bin/python"):
        script = next(w for w in words[1:] if not w.startswith("-"))
        assert script == "pytest" or (REPO / script).exists(), f"{line!r}: no {script}"
    elif words[0] == "python3" and words[1:3] == ["-m", "venv"]:
        pass  # makes an environment, as the line says
    elif words[0] == "curl":
        assert words[-1].startswith("http://127.0.0.1:8000/"), line
    else:
        pytest.fail(f"{line!r}: not a command these checks know")
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_line_parses(page):
    for line in shell_lines(page):
        check(line)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_named_exists(page):
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    # in code: `mnist-cnn predict ...` (in prose, "mnist-cnn" is the project's name)
    named = set(re.findall(r"`(?:\.venv/bin/)?mnist-cnn ([a-z][a-z-]*)", page.read_text()))
    assert named <= commands, sorted(named - commands)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_speak_to_users_not_to_the_project(page):
    text = page.read_text()
    for word in ("session", "issue", "../shared"):
        assert word not in text.lower(), word
    assert "MNIST_DATA_DIR=" not in text  # the data is found without it


def test_the_readme_is_a_guide_of_about_150_to_200_lines():
    lines = (REPO / "README.md").read_text().splitlines()
    assert 140 <= len(lines) <= 210
    text = "\n".join(lines)
    order = ["## What you need", "## Two commands", "## Read the digit in your own photo",
             "## Train a network", "## Draw on the page", "## The commands",
             "## The library in five lines", "## Results", "## More"]
    assert [h for h in lines if h.startswith("## ")] == order
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (REPO / link).is_file(), link


def draw(path: Path, strokes: list[list[tuple[int, int]]], size=(200, 240)) -> None:
    photo = Image.new("L", size, 240)
    pen = ImageDraw.Draw(photo)
    for stroke in strokes:
        pen.line(stroke, fill=20, width=16)
    photo.convert("RGB").save(path)


SEVEN = [[(40, 40), (160, 40), (90, 210)]]
ONE = [[(100, 30), (100, 210)]]


def test_the_quick_commands_of_the_readme_run_as_written(tmp_path, monkeypatch):
    """In a folder holding the photos the README names: what a user would have beside them."""
    monkeypatch.chdir(tmp_path)
    draw(tmp_path / "photo.jpg", SEVEN)
    draw(tmp_path / "other.png", ONE)
    (tmp_path / "folder").mkdir()
    draw(tmp_path / "folder" / "seven.png", SEVEN)
    draw(tmp_path / "year.png", [ONE[0], [(260, 40), (380, 40), (310, 210)]], size=(440, 240))
    ran = []
    for line in shell_lines(REPO / "README.md"):
        args = check(line)
        if args and args[0] in QUICK and "--help" not in args:
            code, out, err = run_main([*args, "--threads", "1"] if args[0] == "predict" else args)
            assert code == 0, f"{line}: {err}"
            assert out.strip(), line
            ran.append(args[0])
    assert {"predict"} <= set(ran)
    assert "photo.jpg: 7 (" in run_main(["predict", "photo.jpg", "--threads", "1"])[1]
