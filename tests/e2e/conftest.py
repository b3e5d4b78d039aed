"""Real DICOM peers on loopback: dcmtk storescp as the PACS, an embedded node on a free port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from harness.peers import (
    DICOMWEB_PLUGIN,
    PACS_AE,
    Orthanc,
    free_port,
    local_settings,
    running_orthanc,
    start_storescp,
)
from node.app import EmbeddedNode
from node.config import Settings
from tests.conftest import require_tool


@dataclass
class Pacs:
    folder: Path
    port: int

    def received(self) -> dict[str, list[Path]]:
        """The files storescp has finished writing, by modality. storescp writes in place, so
        a file still being written (no complete header yet) is left for the next look."""
        by_modality: dict[str, list[Path]] = {}
        for path in sorted(self.folder.iterdir()):
            try:
                modality = str(dcmread(path, stop_before_pixels=True).Modality)
            except (InvalidDicomError, EOFError, AttributeError, OSError, ValueError):
                continue
            by_modality.setdefault(modality, []).append(path)
        return by_modality


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Pacs]:
    require_tool("storescp")
    port = free_port()
    process = start_storescp(tmp_path / "pacs", port)
    yield Pacs(tmp_path / "pacs", port)
    process.terminate()
    process.wait(timeout=10)


# The receivers ([scp] engine); tests that take an `engine` argument run on each.
ENGINES = ("pynetdicom", "asyncio")


def node_settings(tmp_path: Path, pacs: Pacs, allowed: tuple[str, ...] = (),
                  engine: str = "pynetdicom") -> Settings:
    settings = local_settings(tmp_path, pacs.port, stable_seconds=1.0, poll_seconds=0.2,
                              allowed_calling_aes=allowed)
    return replace(settings, scp=replace(settings.scp, engine=engine))


def requested_engine(request: pytest.FixtureRequest) -> str:
    """The test's `engine` parameter, when it has one."""
    callspec = getattr(request.node, "callspec", None)
    return str(callspec.params.get("engine", "pynetdicom")) if callspec else "pynetdicom"


@pytest.fixture
def node(tmp_path: Path, pacs: Pacs, request: pytest.FixtureRequest) -> Iterator[EmbeddedNode]:
    running = EmbeddedNode(node_settings(tmp_path, pacs, engine=requested_engine(request)))
    running.start()
    yield running
    running.stop()


def storescu(
    port: int, path: Path, *options: str, calling_ae: str = "SCANNER"
) -> subprocess.CompletedProcess[str]:
    """dcmtk storescu sending a file, or a folder's *.dcm recursively, to the node."""
    return subprocess.run(
        [require_tool("storescu"), *options, "-aet", calling_ae, "-aec", "LACUNA", "+sd", "+r",
         "+sp", "*.dcm", "127.0.0.1", str(port), str(path)],
        capture_output=True, text=True, timeout=300,
    )


def node_environment(
    tmp_path: Path, scp_port: int, pacs: Pacs, database_url: str, **overrides: str
) -> dict[str, str]:
    """Environment for `lacuna scp|worker` processes sharing one database and storage root."""
    return {
        **os.environ,
        "LACUNA_STORAGE_ROOT": str(tmp_path / "storage"),
        "LACUNA_DATABASE_URL": database_url,
        "LACUNA_SCP_HOST": "127.0.0.1",
        "LACUNA_SCP_PORT": str(scp_port),
        "LACUNA_STUDY_STABLE_SECONDS": "1",
        "LACUNA_STUDY_MISSING_WAIT_SECONDS": "0",
        "LACUNA_WORKER_POLL_SECONDS": "0.2",
        # Off unless a test asks (with a port from free_port): an ephemeral HTTP port could take
        # the port picked for another process's DICOM listener before that process binds it.
        "LACUNA_METRICS_ENABLED": "false",
        "LACUNA_METRICS_HOST": "127.0.0.1",
        "LACUNA_DESTINATIONS": json.dumps(
            [{"name": "pacs", "ae_title": PACS_AE, "host": "127.0.0.1", "port": pacs.port}]
        ),
        **overrides,
    }


def spawn(role: str, environment: dict[str, str]) -> subprocess.Popen[bytes]:
    """A `lacuna ROLE` process; its log goes to ``ROLE-N.log`` beside the storage root."""
    logs = Path(environment["LACUNA_STORAGE_ROOT"]).parent
    logs.mkdir(parents=True, exist_ok=True)
    number = len(list(logs.glob(f"{role}-*.log")))
    with (logs / f"{role}-{number}.log").open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "node.cli", role], env=environment,
                                stdout=log, stderr=subprocess.STDOUT)


def terminate(*processes: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM each process still running and wait for it (teardown of spawned roles)."""
    for process in processes:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc with its DICOMweb plugin; a missing package fails the test (no silent skips)."""
    require_tool("Orthanc")
    if not DICOMWEB_PLUGIN.exists():
        pytest.fail(f"{DICOMWEB_PLUGIN} is missing: `make test` installs orthanc-dicomweb")
    with running_orthanc(tmp_path / "orthanc") as peer:
        yield peer
