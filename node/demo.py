"""``lacuna demo``: a whole round trip on this machine.

A synthetic T2 + T1 FLAIR study goes over C-STORE into a node on a free port; the node sends
its SEG and SR to a local receiving PACS (dcmtk ``storescp``); the demo reads what the PACS
received and prints the lesions next to the ground truth.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from harness.peers import free_port, local_settings, start_storescp
from node.app import EmbeddedNode
from node.config import Destination, ModelSettings
from node.db.tables import Job, Study
from node.dicom.scu import send_files
from node.domain.jobs import JobState
from node.results.readback import ReportedLesion, read_report_statements, read_segmentation
from node.services.rendering import render_study
from node.services.volumes import read_series, source_slices


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
