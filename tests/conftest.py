"""Shared fixtures: databases (SQLite and real PostgreSQL), synthetic studies, DICOM peers."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from node.app import configure_libraries
from node.db.engine import build_engine

# The library settings the node's composition root makes; the test session is one too.
configure_libraries()

POSTGRES_ENV = "LACUNA_TEST_POSTGRES_URL"


def postgres_url() -> str:
    """The PostgreSQL server the tests use; CI sets it. Missing or unreachable fails the run:
    the multi-process queue is only proven on the real server."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.fail(f"{POSTGRES_ENV} is not set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new schema on PostgreSQL (dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'lacuna.db'}"
        return
    base = postgres_url()
    schema = f"lacuna_test_{uuid.uuid4().hex[:12]}"
    admin = build_engine(base)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base else "?"
    yield f"{base}{separator}options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = build_engine(database_url)
    yield engine
    engine.dispose()


def require_tool(name: str) -> str:
    """The path of a real DICOM peer; a missing one fails the test (no silent skips)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; `make test` installs dcmtk and dicom3tools")
    return path


def dciodvfy_errors(path: Path, warnings: bool = False) -> list[str]:
    """dicom3tools' verdict on a file: its lines that start with 'Error' (and, with
    ``warnings``, 'Warning')."""
    result = subprocess.run(
        [require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=120
    )
    prefixes = ("Error", "Warning") if warnings else ("Error",)
    return [line for line in (result.stdout + result.stderr).splitlines()
            if line.startswith(prefixes)]


def wait_for(predicate, timeout_s: float = 120.0, interval_s: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError("condition not met in time")


@pytest.fixture(scope="session")
def synthetic_study(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One T2 + T1 FLAIR study with lesions (seed fixed), written once per session."""
    from training.synth import write_study

    return write_study(tmp_path_factory.mktemp("study"), seed=2026)
