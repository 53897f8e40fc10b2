"""docs/lecture.ipynb runs from top to bottom, as a learner would run it: it cannot rot."""

from __future__ import annotations

import pytest
from conftest import REPO

NOTEBOOK = REPO / "docs" / "lecture.ipynb"


def test_the_lecture_notebook_runs(mnist_data_dir, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")  # dev dependencies (pyproject.toml)
    from nbclient import NotebookClient

    monkeypatch.setenv("MNIST_DATA_DIR", str(mnist_data_dir))  # the kernel finds it as we did
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "Epoch: 0001 cost =" in text and "(?, 4, 4, 128)" in text
    accuracy = {line.split()[0]: float(line.split()[2]) for line in text.splitlines()
                if " accuracy 0." in line and line.split()[0] in ("simple", "deep", "averaged")}
    assert set(accuracy) == {"simple", "deep", "averaged"}
    assert min(accuracy.values()) > 0.9  # a few short passes already read most digits
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 5  # curves, confusion matrix, mistakes, filters, feature maps
    assert (notebook.cells[0].source.startswith("# CNN MNIST: 99%!"))
