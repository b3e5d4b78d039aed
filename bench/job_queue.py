"""The job queue on PostgreSQL (and SQLite for comparison), as processes, on this machine's CPU.

Prints:
1. studies per hour with 1 and with 2 `lacuna worker` processes draining the same queue of
   identical studies (one synthetic 2 x 24-slice study, re-UIDed), results sent to dcmtk
   storescp; counted from the first job started to the last job finished, so model loading
   is not included;
2. the latency of one claim (claim_next_job + commit) with 10,000 jobs queued;
3. the time from a worker's SIGKILL in the middle of a job to another worker picking it up
   (bounded by the lease length, here --lease-seconds).

    .venv/bin/python bench/job_queue.py [--postgres URL] [--studies 8] [--lease-seconds 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import insert, select, text

from harness.peers import PACS_AE, free_port, start_storescp
from models.package import default_package_dir
from node.db.engine import build_engine, session_factory, upgrade
from node.db.jobs import claim_next_job
from node.db.tables import AuditEvent, Job, Patient, Study
from node.dicom.ports import ReceivedInstance
from node.domain.completeness import CompletenessRules
from node.domain.jobs import JobState, StudyState
from node.services import registry
from node.services.intake import Intake
from node.services.scheduler import Scheduler
from training.synth import write_study

DEFAULT_POSTGRES = os.environ.get(
    "LACUNA_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@contextmanager
def postgres_schema(base: str) -> Iterator[str]:
    """A fresh schema on ``base``, dropped afterwards; yields a URL that uses it."""
    schema = f"lacuna_bench_{uuid.uuid4().hex[:10]}"
    admin = build_engine(base)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def store_copies(url: str, root: Path, study_folder: Path, copies: int) -> None:
    """Store ``copies`` of the study, each with new UIDs, as intake would, and queue them."""
    engine = build_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        registry.ensure_default(session, default_package_dir())
    intake = Intake(root, sessions)
    files = sorted(study_folder.rglob("*.dcm"))
    for _ in range(copies):
        uids: dict[str, str] = {}
        for path in files:
            dataset = pydicom.dcmread(path)
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
                old = str(dataset.get(keyword))
                dataset[keyword].value = uids.setdefault(old, str(generate_uid()))
            dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            buffer = io.BytesIO()
            dataset.save_as(buffer, enforce_file_format=True)
            intake.store(ReceivedInstance(buffer.getvalue(), "BENCH", "127.0.0.1",
                                          str(dataset.SOPClassUID), str(dataset.SOPInstanceUID)))
    Scheduler(sessions, CompletenessRules(0.0, missing_wait_seconds=0)).run_once()
    engine.dispose()


def worker_environment(url: str, root: Path, pacs_port: int, **extra: str) -> dict[str, str]:
    return {
        **os.environ, "TCP_NODELAY": "1",
        "LACUNA_DATABASE_URL": url, "LACUNA_STORAGE_ROOT": str(root),
        "LACUNA_WORKER_POLL_SECONDS": "0.1", "LACUNA_LOG_LEVEL": "WARNING",
        "LACUNA_DESTINATIONS": json.dumps(
            [{"name": "pacs", "ae_title": PACS_AE, "host": "127.0.0.1", "port": pacs_port}]),
        **extra,
    }


def spawn_worker(environment: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "node.cli", "worker"], env=environment,
                                stdout=out, stderr=subprocess.STDOUT)


def trail(url: str, *actions: str) -> list[tuple[str, datetime, int | None]]:
    engine = build_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(AuditEvent.action, AuditEvent.occurred_at, AuditEvent.job_id)
            .where(AuditEvent.action.in_(actions)).order_by(AuditEvent.id)
        ).all()
    engine.dispose()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def studies_per_hour(base: str, study_folder: Path, workers: int, studies: int, work: Path) -> float:
    with postgres_schema(base) as url:
        root = work / f"storage-{workers}"
        store_copies(url, root, study_folder, studies)
        pacs_port = free_port()
        pacs = start_storescp(work / f"pacs-{workers}", pacs_port)
        environment = worker_environment(url, root, pacs_port)
        processes = [spawn_worker(environment, work / f"worker-{workers}-{n}.log")
                     for n in range(workers)]
        try:
            while len(trail(url, "job.finished", "job.failed")) < studies:
                if any(p.poll() is not None for p in processes):
                    raise RuntimeError(f"a worker exited; see {work}")
                time.sleep(0.5)
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(timeout=120)
            pacs.terminate()
            pacs.wait()
        events = trail(url, "job.started", "job.finished", "job.failed")
        if any(action == "job.failed" for action, *_ in events):
            raise RuntimeError("a job failed")
        first = min(at for action, at, _ in events if action == "job.started")
        last = max(at for action, at, _ in events if action == "job.finished")
        seconds = (last - first).total_seconds()
        print(f"  {workers} worker(s): {studies} studies in {seconds:.1f} s "
              f"({seconds / studies:.2f} s per study)")
        return studies / seconds * 3600


def claim_latency(url: str, queued: int, claims: int) -> tuple[float, float]:
    """Median and 95th percentile milliseconds of one claim with ``queued`` jobs waiting."""
    engine = build_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    now = datetime.now(UTC)
    with sessions.begin() as session:
        model = registry.ensure_default(session, default_package_dir())
        assert model is not None
        model_id = model.id
        patient = Patient(patient_id="BENCH")
        session.add(patient)
        session.flush()
        session.execute(insert(Study), [
            {"study_instance_uid": f"2.25.{n}", "patient_id": patient.id, "accession_number": "",
             "study_date": "", "state": StudyState.SCHEDULED, "urgent": False,
             "first_received_at": now, "last_received_at": now} for n in range(queued)])
        study_ids = list(session.scalars(select(Study.id)))
        session.execute(insert(Job), [
            {"study_id": study_id, "model_version_id": model_id, "run": 1, "priority": 1,
             "state": JobState.QUEUED, "attempts": 0, "created_at": now}
            for study_id in study_ids])
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(text("ANALYZE jobs"))
    timings = []
    for _ in range(claims):
        started = time.perf_counter()
        with sessions.begin() as session:
            assert claim_next_job(session, "bench", datetime.now(UTC), 60) is not None
        timings.append((time.perf_counter() - started) * 1000)
    engine.dispose()
    timings.sort()
    return statistics.median(timings), timings[int(len(timings) * 0.95)]


def takeover_seconds(base: str, study_folder: Path, lease_seconds: float, work: Path) -> float:
    """Kill the worker running the job; the time until a second (warm) worker reclaims it."""
    with postgres_schema(base) as url:
        root = work / "storage-takeover"
        store_copies(url, root, study_folder, 1)
        pacs_port = free_port()
        pacs = start_storescp(work / "pacs-takeover", pacs_port)
        environment = worker_environment(url, root, pacs_port,
                                         LACUNA_WORKER_LEASE_SECONDS=str(lease_seconds))
        engine = build_engine(url)
        with engine.begin() as connection:  # hold the job back until both workers are warm
            connection.execute(text("UPDATE jobs SET state = 'cancelled'"))
        workers = [spawn_worker(environment, work / f"takeover-{n}.log") for n in range(2)]
        time.sleep(20)  # TensorFlow import and model load (both preload before claiming)
        with engine.begin() as connection:
            connection.execute(text("UPDATE jobs SET state = 'queued'"))
        try:
            while not trail(url, "job.started"):
                time.sleep(0.01)
            with engine.connect() as connection:
                owner = connection.scalar(select(Job.lease_owner))
            assert owner is not None
            victim = next(w for w in workers if owner.endswith(f":{w.pid}"))
            victim.kill()
            killed = time.monotonic()
            while not trail(url, "job.reclaimed"):
                time.sleep(0.01)
            picked_up = time.monotonic() - killed
            while not trail(url, "job.finished"):
                time.sleep(0.1)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=120)
            pacs.terminate()
            pacs.wait()
            engine.dispose()
        return picked_up


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--lease-seconds", type=float, default=3.0)
    parser.add_argument("--queued", type=int, default=10_000)
    args = parser.parse_args()
    print(f"CPU: {os.cpu_count()} cores; PostgreSQL: {build_engine(args.postgres).url.host}")
    with tempfile.TemporaryDirectory(prefix="lacuna-bench-queue-") as temp:
        work = Path(temp)
        study = write_study(work / "study", seed=2026)

        print("1. throughput, same study re-UIDed, SEG + SR sent to storescp:")
        one = studies_per_hour(args.postgres, study.folder, 1, args.studies, work)
        two = studies_per_hour(args.postgres, study.folder, 2, args.studies, work)
        print(f"  studies/hour: 1 worker {one:.0f}, 2 workers {two:.0f} (x{two / one:.2f})")

        print(f"2. claim latency with {args.queued} jobs queued (200 claims):")
        with postgres_schema(args.postgres) as url:
            median, p95 = claim_latency(url, args.queued, 200)
        print(f"  PostgreSQL: median {median:.2f} ms, p95 {p95:.2f} ms")
        median, p95 = claim_latency(f"sqlite:///{work / 'claims.db'}", args.queued, 200)
        print(f"  SQLite:     median {median:.2f} ms, p95 {p95:.2f} ms")

        print(f"3. takeover after SIGKILL, lease {args.lease_seconds:g} s (3 runs):")
        takeovers = [takeover_seconds(args.postgres, study.folder, args.lease_seconds, work)
                     for _ in range(3)]
        print(f"  picked up after {', '.join(f'{t:.2f}' for t in takeovers)} s "
              f"(median {statistics.median(takeovers):.2f} s)")


if __name__ == "__main__":
    main()
