"""The packages are layers: each module of src/mnist_cnn imports only its own layer or those below
it (every import counts, the ones inside functions too), and reading a photo loads nothing of
training. The order, lowest first, is the one the packages' docstrings give."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "mnist_cnn"

# lowest first; a module may import its own layer and any layer before it
LAYERS = [
    {"errors", "files", "opencv"},  # leaves: the one error type, safe file writes, cv2
    {"data"},  # IDX files, the dataset catalogue and downloader, splits
    {"images"},  # decoding and preprocessing photos, drawing synthetic digits
    {"models"},  # catalogue, recipes, registry, networks, checkpoints
    {"runtime"},  # device, threads, torchrun
    {"inference"},  # probabilities, predictor, numbers, ensembles averaged, novelty, export
    {"training"},  # the loop, augmentation, ensemble members trained
    {"server"},  # the drawing page and its API
    {"cli", "__main__", "__init__"},  # the command line and the package's lazy names
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The layer a module belongs to: its subpackage, or the top-level module's own name."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def imported(path: Path) -> set[str]:
    """Every mnist_cnn module `path` imports, resolved to absolute names."""
    module = module_name(path)
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "mnist_cnn"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "mnist_cnn":
                continue
            found.add(target)
            for alias in node.names:  # `from . import x` names a module when x is one
                if (SRC / Path(*f"{target}.{alias.name}".split("."))).with_suffix(".py").exists() \
                        or (SRC / Path(*f"{target}.{alias.name}".split("."))).is_dir():
                    found.add(f"{target}.{alias.name}")
    found.discard(module)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imported(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_package_has_a_layer():
    units = {unit(m) for m in graph()}
    assert units <= set(RANK), f"packages without a layer in tests/test_layers.py: {units - set(RANK)}"


def test_modules_import_only_their_layer_or_below():
    wrong = []
    for module, targets in graph().items():
        for target in targets:
            if target == "mnist_cnn" and unit(module) != "__init__":
                # `from .. import __version__` reads the package's own attribute, nothing above
                continue
            if RANK[unit(target)] > RANK[unit(module)]:
                wrong.append(f"{module} imports {target} (layer {unit(target)} is above {unit(module)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_cycles_between_packages():
    edges: dict[str, set[str]] = {}
    for module, targets in graph().items():
        for target in targets:
            if unit(target) != unit(module) and target != "mnist_cnn":
                edges.setdefault(unit(module), set()).add(unit(target))
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in edges.get(node, ()):
            assert state.get(nxt) != 1, f"a cycle between packages: {' -> '.join([*path, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in list(edges):
        if node not in state:
            visit(node, [])


def test_the_graph_sees_imports():
    """The checks above are only as good as the parser: it finds lazy and relative imports."""
    g = graph()
    assert "mnist_cnn.training.loop" in g["mnist_cnn.cli"]  # imported inside a function
    assert "mnist_cnn.models.checkpoint" in g["mnist_cnn.inference.predict"]  # `from ..models...`
    assert "mnist_cnn.runtime.distributed" in g["mnist_cnn.runtime.device"]  # `from . import x`


@pytest.mark.parametrize("module", ["mnist_cnn.inference.predict", "mnist_cnn.inference.numbers",
                                    "mnist_cnn.server.app"])
def test_inference_loads_nothing_of_training(module):
    """No training module, and no tqdm but what `import torch` loads itself (torch.hub imports
    tqdm, so "no tqdm at all" cannot hold while torch is imported)."""
    code = ("import sys, importlib, torch; before = set(sys.modules); "
            "importlib.import_module(sys.argv[1]); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('mnist_cnn.training') "
            "or (m.split('.')[0] == 'tqdm' and m not in before))))")
    result = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True,
                            check=True, timeout=120)
    assert result.stdout.split() == [], f"importing {module} loaded {result.stdout.strip()}"
