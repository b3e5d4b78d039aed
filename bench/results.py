"""Result objects: size and build time of each kind for a 24-slice study (512x512 and 256x256),
and the round trip with Orthanc as the PACS, by C-STORE and by STOW-RS.

Part 1 runs the active default model on a synthetic study and times each builder (SEG, SR,
GSPS, secondary-capture key images) and the encoding, printing the bytes of each object.
Part 2 has Orthanc (Debian packages orthanc, orthanc-dicomweb) hold the study and send it to a
warm Lacuna node (`/modalities/lacuna/store`); Lacuna returns SEG, SR, GSPS and key images to
Orthanc. It prints the seconds from the start of Orthanc's send to the last result stored in
Orthanc, with the job's stage timings.

    .venv/bin/python bench/results.py [--repeats 3] [--matrix 512 256] [--objects-only]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import select

from harness.peers import local_settings, running_orthanc
from models.inference import TwoStageEngine
from models.package import default_package_dir
from node.app import EmbeddedNode
from node.config import Destination
from node.db.tables import Delivery, Job
from node.domain.delivery import DeliveryState
from node.domain.jobs import JobState
from node.results.fallbacks import build_key_images, build_presentation_state, shown_slices
from node.results.identity import ModelIdentity, NodeIdentity
from node.results.seg import build_segmentation, segment_numbers
from node.results.sr import build_report
from node.services.volumes import load_study_volumes
from training.phantom import Contrast, axial_geometry
from training.synth import write_study

KINDS = ("SEG", "SR", "GSPS", "SC")
MODEL = ModelIdentity("lacuna-synthetic", "bench", "00" * 32, "synthetic data")
NODE = NodeIdentity("1.2.826.0.1.3680043.8.498.2", "LACUNA-BENCH")


def encoded_size(dataset: Any) -> int:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.tell()


def build_figures(folder: Path, engine: TwoStageEngine, repeats: int) -> None:
    volumes = load_study_volumes(sorted((folder / "T2_FLAIR").glob("*.dcm")),
                                 sorted((folder / "T1_FLAIR").glob("*.dcm")))
    lesions = engine.segment(volumes.t2, volumes.t1, volumes.t1_available, volumes.pixel_spacing,
                             volumes.slice_spacing)
    numbers = segment_numbers(lesions)
    source_bytes = sum(p.stat().st_size for p in folder.rglob("*.dcm"))
    print(f"  {volumes.t2.shape[0]} slices {volumes.t2.shape[1]}x{volumes.t2.shape[2]}, "
          f"{len(lesions.lesions)} lesion(s), source study {source_bytes / 2**20:.1f} MiB")
    if not lesions.lesions:
        print("  the model found no lesion: SEG, GSPS and key images are not built")
        return

    def build(kind: str) -> list[Any]:
        uid = str(generate_uid())
        if kind == "SEG":
            return [build_segmentation(volumes.t2_datasets, lesions, MODEL, uid, str(generate_uid()),
                                       node=NODE)]
        if kind == "SR":
            seg = build_segmentation(volumes.t2_datasets, lesions, MODEL, uid, str(generate_uid()),
                                     node=NODE)
            return [build_report(volumes.t2_instances + volumes.t1_instances, lesions.lesions, seg,
                                 numbers, str(volumes.t2_datasets[0].SeriesInstanceUID), MODEL,
                                 None, str(generate_uid()), str(generate_uid()),
                                 source_slices=list(zip(volumes.t2_datasets, volumes.t2_frames,
                                                        strict=True)),
                                 node=NODE)]
        if kind == "GSPS":
            return [build_presentation_state(volumes.t2_datasets, volumes.t2, lesions, MODEL, uid,
                                             str(generate_uid()), node=NODE)]
        return list(build_key_images(volumes.t2_datasets, volumes.t2, lesions, MODEL, uid,
                                     [str(generate_uid()) for _ in shown_slices(lesions)],
                                     node=NODE))

    print(f"  {'object':<6} {'count':>5} {'bytes':>10} {'JSON bytes':>10} {'build ms':>9} "
          f"{'encode ms':>9}")
    for kind in KINDS:
        build_ms, encode_ms = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            objects = build(kind)
            build_ms.append(1000 * (time.perf_counter() - started))
            started = time.perf_counter()
            sizes = [encoded_size(obj) for obj in objects]
            encode_ms.append(1000 * (time.perf_counter() - started))
        # What a DICOMweb client downloads as the objects' metadata (bulk data excluded).
        json_bytes = sum(len(json.dumps(obj.to_json_dict(
            bulk_data_threshold=1024, bulk_data_element_handler=lambda _: ""), default=str))
            for obj in objects)
        note = " (includes building the SEG it references)" if kind == "SR" else ""
        print(f"  {kind:<6} {len(objects):>5} {sum(sizes):>10,} {json_bytes:>10,} "
              f"{statistics.median(build_ms):>9.0f} {statistics.median(encode_ms):>9.0f}{note}")


def round_trip(folder: Path, workdir: Path, protocol: str) -> None:
    with running_orthanc(workdir / "orthanc") as orthanc:
        if protocol == "C-STORE":
            destination = Destination("orthanc", orthanc.ae_title, "127.0.0.1", orthanc.dicom_port,
                                      objects=KINDS)
        else:
            destination = Destination("orthanc", url=orthanc.dicomweb_url, objects=KINDS)
        settings = replace(local_settings(workdir, 0, stable_seconds=1.0, poll_seconds=0.1),
                           destinations=(destination,))
        [study_id] = orthanc.upload(folder)
        node = EmbeddedNode(settings)
        node.start()
        try:
            node.model_ready.wait(300)  # warm: the model is loaded before the clock starts
            orthanc.add_modality("lacuna", "LACUNA", node.port)
            started = time.perf_counter()
            orthanc.rest("POST", "/modalities/lacuna/store",
                         {"Resources": [study_id], "Synchronous": True})
            sent = time.perf_counter() - started
            total: float | None = None  # until the last result is acknowledged by Orthanc
            while True:
                with node.database.sessions.begin() as session:
                    states = list(session.scalars(select(Delivery.state)))
                    job = session.scalar(select(Job))
                if states and all(state == DeliveryState.DELIVERED for state in states):
                    total = total or time.perf_counter() - started
                    if job is not None and job.state == JobState.DONE:  # its timings are saved
                        break
                if time.perf_counter() - started > 600:
                    raise SystemExit("no results in Orthanc after 600 s")
                time.sleep(0.05)
            series = orthanc.rest("GET", f"/studies/{study_id}/series")
            results = sum(len(item["Instances"]) for item in series
                          if item["MainDicomTags"].get("Modality") in ("SEG", "SR", "PR", "OT"))
        finally:
            node.stop()
    timings = job.timings if job is not None and job.timings else {}
    stages = ", ".join(f"{name} {timings[name]:.2f}" for name in
                       ("read", "inference", "building", "encoding", "export") if name in timings)
    print(f"  {protocol:<8} {total:6.1f} s from Orthanc's send to the last of {results} results "
          f"stored in Orthanc (send {sent:.1f} s; job: {stages} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matrix", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--objects-only", action="store_true",
                        help="part 1 only (no Orthanc round trip)")
    args = parser.parse_args()
    engine = TwoStageEngine.load(default_package_dir())
    with tempfile.TemporaryDirectory(prefix="lacuna-bench-results-") as temp:
        root = Path(temp)
        for matrix in args.matrix:
            study = write_study(root / f"study-{matrix}", seed=7,
                                t2_geometry=axial_geometry(matrix=matrix), lesion_count=4)
            assert Contrast.T2_FLAIR in study.series
            print(f"\nResult objects, {matrix}x{matrix} (medians of {args.repeats}):")
            build_figures(study.folder, engine, args.repeats)
            if args.objects_only:
                continue
            print(f"Round trip with Orthanc, {matrix}x{matrix}:")
            for protocol in ("C-STORE", "STOW-RS"):
                round_trip(study.folder, root / f"{protocol}-{matrix}", protocol)


if __name__ == "__main__":
    main()
