"""The test suite's own promise: a test on the real MNIST finds it as the product does, and never
skips unseen when it cannot."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")


def run_pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """pytest on one test that needs the real MNIST, under this conftest, with `env` added."""
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(CONFTEST, suite / "conftest.py")
    (suite / "test_needs_mnist.py").write_text("def test_it(mnist_data_dir):\n    pass\n")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MNIST")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(suite)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**environment, **env})


def test_a_data_folder_without_mnist_fails_the_test(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_pytest(tmp_path, MNIST_DATA_DIR=str(empty))
    assert result.returncode == 1, result.stdout
    assert "1 error" in result.stdout
    assert "the real MNIST could not be had" in result.stdout and str(empty) in result.stdout


def test_a_skip_must_be_asked_for_and_is_announced(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_pytest(tmp_path, MNIST_DATA_DIR=str(empty), MNIST_CNN_REQUIRE_DATA="0")
    assert result.returncode == 0, result.stdout
    assert "1 tests that need the real MNIST were SKIPPED" in result.stdout


def test_the_data_is_found_where_the_product_finds_it(mnist_data_dir):
    from mnist_cnn.data.sources import locate

    assert mnist_data_dir == locate("mnist", download=False)
