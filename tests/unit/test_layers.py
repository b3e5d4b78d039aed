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


def test_models_never_import_the_node() -> None:
    assert "node" not in imported_modules(ROOT / "models")


@pytest.mark.parametrize("module", ["node.dicom.scp", "node.services.intake", "node.cli", "node.app"])
def test_tensorflow_is_imported_only_when_a_model_loads(module: str) -> None:
    code = f"import sys, {module}; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT)
    assert result.stdout.strip() == "False"
