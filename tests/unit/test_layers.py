"""Layers point inward: the domain has no I/O dependencies, models never import the node, and
the SCP never imports TensorFlow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_domain_imports_no_adapters() -> None:
    forbidden = {"pynetdicom", "pydicom", "sqlalchemy", "tensorflow", "keras", "highdicom", "os"}
    assert imported_modules(ROOT / "node" / "domain") & forbidden == set()


def test_models_import_only_the_domain_of_the_node() -> None:
    for path in (ROOT / "models").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("node"):
                assert node.module.startswith("node.domain"), f"{path.name} imports {node.module}"


def test_the_import_contracts_hold() -> None:
    """pyproject.toml's layers: no cycle, no arrow from a lower layer to a higher one."""
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter), "--no-cache"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize("module", ["node.dicom.scp", "node.services.intake", "node.cli", "node.app"])
def test_tensorflow_is_imported_only_when_a_model_loads(module: str) -> None:
    code = f"import sys, {module}; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT)
    assert result.stdout.strip() == "False"


def test_no_module_imports_itself_through_others() -> None:
    """No import cycle between modules of node/, models/ and training/ (the layers contract
    sees packages; this sees modules, imports inside functions included)."""
    import grimp

    graph = grimp.build_graph("node", "models", "training", cache_dir=None)
    modules = sorted(graph.modules)
    edges = {m: graph.find_modules_directly_imported_by(m) & graph.modules for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in edges[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in modules:
        if module not in index:
            visit(module)
    assert cycles == []
