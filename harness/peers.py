"""Real DICOM peers on this machine, shared by ``lacuna demo``, the tests and bench/: dcmtk's
storescp as a receiving PACS, Orthanc (with DICOMweb) driven through its REST API, a free
loopback port, and the settings of a node that talks to them. Outside the node package: the
node itself never starts a peer."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.config import (
    DatabaseSettings,
    Destination,
    MetricsSettings,
    ModelSettings,
    ScpSettings,
    Settings,
    StorageSettings,
    StudySettings,
    WorkerSettings,
)

PACS_AE = "DEMOPACS"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_storescp(folder: Path, port: int) -> subprocess.Popen[bytes]:
    """dcmtk's storescp as the receiving PACS; raises if dcmtk is not installed."""
    executable = shutil.which("storescp")
    if executable is None:
        raise RuntimeError("dcmtk's storescp is not installed (apt-get install dcmtk)")
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [executable, "--output-directory", str(folder), "--aetitle", PACS_AE, str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # Debian's dcmtk leaves Nagle's algorithm on, which caps it near 20 instances/s.
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.05)
    process.terminate()
    raise RuntimeError("storescp did not start listening")


def local_settings(
    workdir: Path,
    pacs_port: int,
    stable_seconds: float = 2.0,
    poll_seconds: float = 0.5,
    missing_wait_seconds: float = 0.0,
    allowed_calling_aes: tuple[str, ...] = (),
    models: ModelSettings | None = None,
) -> Settings:
    """A node on loopback and a free port, keeping everything under ``workdir``, sending to a
    PACS (:data:`PACS_AE`) on ``pacs_port``: the demo's, the benchmarks' and the tests' node."""
    return Settings(
        scp=ScpSettings(ae_title="LACUNA", host="127.0.0.1", port=0,
                        allowed_calling_aes=allowed_calling_aes),
        storage=StorageSettings(root=workdir / "storage"),
        database=DatabaseSettings(url=f"sqlite:///{workdir / 'lacuna.db'}"),
        study=StudySettings(stable_seconds=stable_seconds,
                            missing_wait_seconds=missing_wait_seconds),
        worker=WorkerSettings(poll_seconds=poll_seconds),
        destinations=(Destination("pacs", PACS_AE, "127.0.0.1", pacs_port),),
        models=models or ModelSettings(),
        metrics=MetricsSettings(enabled=False),  # the demo, benches and tests need no endpoint
    )


DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@dataclass
class Orthanc:
    """A running Orthanc (Debian packages orthanc and orthanc-dicomweb) on loopback, driven
    through its REST API: the PACS of the tests and of bench/."""

    http_port: int
    dicom_port: int
    pid: int
    ae_title: str = "ORTHANC"

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def rest(self, method: str, path: str, body: bytes | dict[str, object] | None = None,
             timeout: float = 300) -> Any:
        text = self.rest_bytes(method, path, body, timeout)
        return json.loads(text) if text else None

    def rest_bytes(self, method: str, path: str, body: bytes | dict[str, object] | None = None,
                   timeout: float = 300) -> bytes:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data,
                                         method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return bytes(response.read())

    def upload(self, folder: Path) -> set[str]:
        """POST every *.dcm under ``folder``; returns Orthanc's study ids."""
        studies = set()
        for path in sorted(folder.rglob("*.dcm")):
            answer = self.rest("POST", "/instances", path.read_bytes())
            if answer["Status"] not in ("Success", "AlreadyStored"):
                raise RuntimeError(f"Orthanc refused {path.name}: {answer}")
            studies.add(str(answer["ParentStudy"]))
        return studies

    def add_modality(self, name: str, ae_title: str, port: int) -> None:
        self.rest("PUT", f"/modalities/{name}", {"AET": ae_title, "Host": "127.0.0.1", "Port": port})


@contextmanager
def running_orthanc(folder: Path, dicomweb: bool = True) -> Iterator[Orthanc]:
    """Orthanc on free ports with its index under ``folder`` (TCP_NODELAY, as for dcmtk) and,
    with ``dicomweb``, the DICOMweb plugin at /dicom-web; stopped on exit."""
    binary = shutil.which("Orthanc")
    if binary is None:
        raise RuntimeError("Orthanc is not installed (apt-get install orthanc)")
    if dicomweb and not DICOMWEB_PLUGIN.exists():
        raise RuntimeError(f"{DICOMWEB_PLUGIN} is missing (apt-get install orthanc-dicomweb)")
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = folder / "orthanc.json"
    config.write_text(json.dumps({
        "Name": "PACS", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
        "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
        "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
        "StableAge": 1, "HttpTimeout": 300,
    }))
    with (folder / "orthanc.log").open("wb") as log:
        process = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "TCP_NODELAY": "1"})
        peer = Orthanc(http_port, dicom_port, process.pid)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    peer.rest("GET", "/system", timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError(
                            f"Orthanc did not start (see {folder / 'orthanc.log'})") from None
                    time.sleep(0.2)
            yield peer
        finally:
            process.terminate()
            process.wait(timeout=30)
