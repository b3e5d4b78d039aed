"""``lacuna demo``: a whole round trip on this machine.

A synthetic T2 + T1 FLAIR study goes over C-STORE into a node on a free port; the node sends
its SEG and SR to a local receiving PACS (dcmtk ``storescp``); the demo reads what the PACS
received and prints the lesions next to the ground truth.
"""

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

import numpy as np
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from node.app import EmbeddedNode
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
from node.db.tables import Job, Study
from node.dicom.scu import send_files
from node.domain.jobs import JobState
from node.results.readback import ReportedLesion, read_report_statements, read_segmentation
from node.services.rendering import render_study
from node.services.volumes import read_series, source_slices

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


def run_demo(
    workdir: Path, seed: int, models: ModelSettings | None = None, timeout_s: float = 300.0
) -> int:
    """Run the round trip in ``workdir``; returns the exit code."""
    from training.synth import write_study

    workdir.mkdir(parents=True, exist_ok=True)
    print(f"Making a synthetic T2 FLAIR + T1 FLAIR study (seed {seed}) ...", flush=True)
    shutil.rmtree(workdir / "study", ignore_errors=True)  # ours: an earlier demo's study
    study = write_study(workdir / "study", seed)
    pacs_dir = workdir / "pacs"
    pacs_port = free_port()
    pacs = start_storescp(pacs_dir, pacs_port)
    settings = local_settings(workdir, pacs_port, models=models)
    node = EmbeddedNode(settings)
    node.start()
    try:
        print("Loading the model ...", flush=True)
        node.model_ready.wait(timeout_s)
        files = [p for paths in study.series.values() for p in paths]
        print(f"Sending {len(files)} instances to LACUNA at 127.0.0.1:{node.port} ...", flush=True)
        sent_at = time.monotonic()
        outcomes = send_files(
            Destination("lacuna", "LACUNA", "127.0.0.1", node.port), files, "DEMOSCU"
        )
        failed = [o for o in outcomes if o.status != 0]
        if failed:
            print(f"{len(failed)} instance(s) were refused")
            return 1
        job = _wait_for_job(node, study.study_instance_uid, timeout_s)
        if job.state != JobState.DONE:
            print(f"Job {job.id} ended {job.state}: {job.error}")
            return 1
        received = _wait_for_results(pacs_dir, study.study_instance_uid, timeout_s)
        elapsed = time.monotonic() - sent_at
        picture = render_study(node.database.sessions, settings.storage.root,
                               study.study_instance_uid, workdir / "result.png")
    finally:
        node.stop()
        pacs.terminate()
        pacs.wait(timeout=10)

    _print_results(study.folder, received, elapsed, job.timings or {})
    print(f"\nFiles: study {study.folder}\n       node storage {settings.storage.root}"
          f"\n       received by the PACS {pacs_dir}"
          f"\n       a picture of the result {picture}")
    return 0


def _wait_for_job(node: EmbeddedNode, study_instance_uid: str, timeout_s: float) -> Job:
    """The study's job once it ends (an earlier demo's jobs in the same folder do not count)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with node.database.sessions.begin() as session:
            job = session.scalar(
                select(Job).join(Study, Job.study_id == Study.id)
                .where(Study.study_instance_uid == study_instance_uid)
                .order_by(Job.id.desc()).limit(1))
            if job is not None and job.state in (JobState.DONE, JobState.FAILED):
                return job
        time.sleep(0.25)
    raise TimeoutError("no job finished in time")


def _wait_for_results(folder: Path, study_instance_uid: str, timeout_s: float) -> dict[str, Path]:
    """The study's SR (always) and SEG (when there are lesions) as stored by the PACS."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found: dict[str, Path] = {}
        for path in folder.iterdir():
            try:
                header = dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, EOFError, AttributeError, ValueError):
                continue  # storescp is still writing it
            if str(header.StudyInstanceUID) == study_instance_uid:
                found[str(header.Modality)] = path
        if "SR" in found:
            return found
        time.sleep(0.25)
    raise TimeoutError("the PACS did not receive the results in time")


def _print_results(
    study_folder: Path, received: dict[str, Path], elapsed: float, timings: dict[str, float]
) -> None:
    truth = json.loads((study_folder / "ground_truth.json").read_text())["lesions"]
    labels = np.load(study_folder / "labels.npy")
    t2 = read_series(sorted((study_folder / "T2_FLAIR").glob("*.dcm")))
    spacing = t2.planes[0].pixel_spacing
    voxel = spacing[0] * spacing[1] * float(t2.datasets[0].SpacingBetweenSlices)
    found: list[ReportedLesion] = []
    if "SEG" in received:
        found = read_segmentation(received["SEG"], source_slices(t2.planes), voxel)
    groups, statements = read_report_statements(received["SR"])

    true_masks = _components(labels)
    stages = ", ".join(f"{stage.replace('_', ' ')} {timings.get(stage, 0.0):.1f} s"
                       for stage in ("read", "model_load", "inference", "building", "encoding",
                                     "export"))
    print(f"\nRound trip in {elapsed:.1f} s ({stages})\n")
    print(f"{'#':>2}  {'ground truth':<30} {'Lacuna (SEG/SR as received by the PACS)':<40}")
    print(f"{'':>2}  {'class':<6}{'mm3':>8}  {'slices':<14} {'class':<13}{'mm3':>8}  {'slices':<14}")
    matched: set[int] = set()
    for number, (row, mask) in enumerate(zip(truth, true_masks, strict=True), start=1):
        hit = next((i for i, f in enumerate(found) if i not in matched and (f.mask & mask).any()),
                   None)
        left = f"{row['class']:<6}{row['volume_mm3']:>8.1f}  {_slices(row['slices']):<14}"
        if hit is None:
            right = "missed"
        else:
            matched.add(hit)
            f = found[hit]
            right = f"{f.lesion_class:<13}{f.volume_mm3:>8.1f}  {_slices(f.slices):<14}"
        print(f"{number:>2}  {left} {right}")
    for index, f in enumerate(found):
        if index not in matched:
            print(f"{'':>2}  {'(no lesion here)':<30} "
                  f"{f.lesion_class:<13}{f.volume_mm3:>8.1f}  {_slices(f.slices):<14}")
    correct = sum(
        1 for row, mask in zip(truth, true_masks, strict=True)
        for f in found if (f.mask & mask).any() and f.lesion_class == row["class"]
    )
    print(f"\nDetected {len(matched)} of {len(truth)} ground-truth lesions "
          f"({correct} with the right class); {len(found) - len(matched)} false positive(s); "
          f"SR has {groups} lesion group(s).")
    for statement in statements:
        print(f"SR: {statement}")


def _components(labels: np.ndarray) -> list[np.ndarray]:
    """Ground-truth lesion masks in the order of ground_truth.json."""
    from skimage.measure import label, regionprops

    components = label(labels > 0, connectivity=2)
    return [components == region.label for region in regionprops(components)]


def _slices(slices: list[int] | tuple[int, ...]) -> str:
    return ",".join(str(s + 1) for s in slices)
