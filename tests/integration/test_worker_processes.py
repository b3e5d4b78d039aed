"""Several worker processes drain one queue: PostgreSQL with four, SQLite with two."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, select

from models.package import default_package_dir
from node.db.engine import session_factory, upgrade
from node.db.tables import AuditEvent, Job
from node.domain.jobs import JobState
from node.services import registry
from tests.integration.test_queue import add_study

JOBS = 200


def test_worker_processes_drain_the_queue_each_job_once(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    processes = 4 if engine.dialect.name == "postgresql" else 2
    upgrade(engine)
    sessions = session_factory(engine)
    now = datetime.now(UTC)
    with sessions.begin() as session:
        model = registry.ensure_default(session, default_package_dir())
        assert model is not None
        for n in range(JOBS):
            study = add_study(session, f"1.7.{n}", now, None)
            session.add(Job(study_id=study.id, model_version_id=model.id, state=JobState.QUEUED,
                            attempts=0, created_at=now))

    go = tmp_path / "go"
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.integration.fake_pipeline_worker", database_url,
             f"worker-{n}", str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for n in range(processes)
    ]
    go.touch()
    reports = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-2000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))

    with sessions.begin() as session:
        jobs = session.execute(select(Job.id, Job.state, Job.attempts)).all()
        trail = session.execute(
            select(AuditEvent.action, AuditEvent.job_id, AuditEvent.details)
        ).all()
    assert {(state, attempts) for _, state, attempts in jobs} == {(JobState.DONE, 1)}
    started = [(job_id, details["worker"]) for action, job_id, details in trail
               if action == "job.started"]
    finished = Counter(job_id for action, job_id, _ in trail if action == "job.finished")
    # Every job claimed once and finished once; nobody reclaimed anything.
    assert sorted(job_id for job_id, _ in started) == sorted(job_id for job_id, *_ in jobs)
    assert set(finished.values()) == {1} and len(finished) == JOBS
    assert not any(action in ("job.reclaimed", "job.lease_lost") for action, *_ in trail)
    # Claims spread: every worker took a fair share (the least busy at least a fifth of even).
    per_worker = Counter(owner for _, owner in started)
    assert sorted(per_worker) == sorted(f"worker-{n}" for n in range(processes))
    assert min(per_worker.values()) >= JOBS / processes / 5, per_worker
    assert {r["owner"]: r["done"] for r in reports} == dict(per_worker)
