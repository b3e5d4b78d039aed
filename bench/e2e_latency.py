"""Latency of one study through a warm node, for 2 x 24 slices at 256x256 and 512x512 (CPU).

Prints the seconds from the last instance acknowledged (dcmtk storescu exits) to the last
result stored by the receiver (dcmtk storescp), split into the quiet-period wait, reading the
series, inference, encoding SEG + SR and export; and, as a peer measured in the same run, the
time storescu takes to send the same study to storescp directly and to Lacuna. The first study
of each node loads the model and is not counted (its model-load time is printed).

    .venv/bin/python bench/e2e_latency.py [--stable-seconds 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

from harness.peers import PACS_AE, free_port, local_settings, start_storescp
from node.app import EmbeddedNode
from node.db.tables import Job
from node.domain.jobs import JobState
from training.phantom import axial_geometry
from training.synth import write_study

ENV = {**os.environ, "TCP_NODELAY": "1"}
STAGES = ("wait", "read", "inference", "building", "encoding", "export")


def storescu(port: int, ae_title: str, folder: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["storescu", "-aec", ae_title, "+sd", "+r", "+sp", "*.dcm", "127.0.0.1", str(port),
         str(folder)],
        check=True, capture_output=True, env=ENV,
    )
    return time.perf_counter() - started


def finished_job(node: EmbeddedNode, study_uid: str) -> Job:
    from node.db.tables import Study

    while True:
        with node.database.sessions.begin() as session:
            job = session.scalar(
                select(Job).join(Study).where(Study.study_instance_uid == study_uid)
            )
            if job is not None and job.state in (JobState.DONE, JobState.FAILED):
                if job.state != JobState.DONE:
                    raise RuntimeError(f"job failed: {job.error}")
                return job
        time.sleep(0.01)


def measure(matrix: int, repeats: int, stable_seconds: float, workdir: Path) -> None:
    pacs_dir, peer_dir = workdir / "pacs", workdir / "peer"
    pacs_port, peer_port = free_port(), free_port()
    pacs, peer = start_storescp(pacs_dir, pacs_port), start_storescp(peer_dir, peer_port)
    node = EmbeddedNode(local_settings(workdir, pacs_port, stable_seconds, poll_seconds=0.05))
    node.start()
    runs: list[dict[str, float]] = []
    model_load = 0.0
    try:
        for index in range(repeats + 1):
            study = write_study(workdir / f"study{index}", 4242 + index,
                                t2_geometry=axial_geometry(matrix=matrix), lesion_count=4)
            expected = len(list(pacs_dir.iterdir())) + 2  # SEG and SR
            peer_send = storescu(peer_port, PACS_AE, study.folder)
            lacuna_send = storescu(node.port, "LACUNA", study.folder)
            acknowledged = time.perf_counter()
            while len(list(pacs_dir.iterdir())) < expected:
                time.sleep(0.005)
            delivered = time.perf_counter()
            timings = finished_job(node, study.study_instance_uid).timings or {}
            if index == 0:
                model_load = timings["model_load"]
                continue
            runs.append({"end_to_end": delivered - acknowledged,
                         **{stage: timings[stage] for stage in STAGES},
                         "send_lacuna": lacuna_send, "send_storescp": peer_send})
    finally:
        node.stop()
        for process in (pacs, peer):
            process.terminate()
            process.wait()
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    ratio = median["send_lacuna"] / median["send_storescp"]
    print(f"{matrix:>8}" + "".join(f" {median[key]:>13.3f}" for key in runs[0])
          + f" {ratio:>13.2f} {model_load:>13.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stable-seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"quiet period {args.stable_seconds} s; medians of {args.repeats} studies on a warm "
          "node; seconds")
    header = ("matrix", "end_to_end", *STAGES, "send_lacuna", "send_storescp",
              "send_ratio", "model_load")
    print(f"{header[0]:>8}" + "".join(f" {h:>13}" for h in header[1:]))
    for matrix in (256, 512):
        with tempfile.TemporaryDirectory() as folder:
            measure(matrix, args.repeats, args.stable_seconds, Path(folder))


if __name__ == "__main__":
    main()
