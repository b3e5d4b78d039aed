"""`lacuna scp` and `lacuna worker` as separate processes on one database and storage root:
the receiving process never loads TensorFlow, and a worker killed with SIGKILL in the middle
of a job loses nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from harness.peers import free_port
from node.db.engine import build_engine, session_factory
from node.db.tables import AuditEvent, Job
from node.domain.jobs import JobState
from node.services import audit
from tests.conftest import wait_for
from tests.e2e.conftest import Pacs, listening, node_environment, spawn, storescu, terminate

pytestmark = pytest.mark.e2e


def test_scp_process_receives_worker_process_processes(
    tmp_path: Path, pacs: Pacs, synthetic_study  # type: ignore[no-untyped-def]
) -> None:
    port = free_port()
    environment = node_environment(tmp_path, port, pacs, f"sqlite:///{tmp_path / 'lacuna.db'}")
    scp = spawn("scp", environment)
    worker = None
    try:
        wait_for(lambda: listening(port), timeout_s=180)
        assert storescu(port, synthetic_study.folder).returncode == 0
        worker = spawn("worker", environment)
        received = wait_for(lambda: (r := pacs.received()) and {"SEG", "SR"} <= set(r) and r,
                            timeout_s=240)
        assert len(received["SR"]) == 1
        # The receiving process never loaded TensorFlow; the worker did.
        assert "tensorflow" not in Path(f"/proc/{scp.pid}/maps").read_text()
        assert "tensorflow" in Path(f"/proc/{worker.pid}/maps").read_text()
    finally:
        terminate(scp, worker)  # SIGTERM, then wait: no process outlives the test
    assert scp.returncode == 0
    assert worker is not None and worker.returncode == 0


def test_a_killed_worker_s_job_is_finished_by_another(
    tmp_path: Path, pacs: Pacs, synthetic_study, database_url: str  # type: ignore[no-untyped-def]
) -> None:
    port = free_port()
    environment = node_environment(tmp_path, port, pacs, database_url,
                                   LACUNA_WORKER_LEASE_SECONDS="3")
    engine = build_engine(database_url)

    def trail() -> list[AuditEvent]:
        with engine.connect() as connection:
            return list(connection.execute(select(AuditEvent).order_by(AuditEvent.id)))  # type: ignore[arg-type]

    # Started together on an empty database: migrations and the first model registration
    # must not race.
    scp = spawn("scp", environment)
    first = spawn("worker", environment)
    second = None
    try:
        wait_for(lambda: listening(port), timeout_s=180)
        assert storescu(port, synthetic_study.folder).returncode == 0
        wait_for(lambda: any(e.action == "job.started" for e in trail()), timeout_s=240,
                 interval_s=0.02)
        first.kill()  # SIGKILL in the middle of the job: no chance to clean up
        first.wait()
        second = spawn("worker", environment)
        received = wait_for(lambda: (r := pacs.received()) and {"SEG", "SR"} <= set(r) and r,
                            timeout_s=240)

        def finished() -> tuple[str, int] | None:  # the row commits just after delivery
            with engine.connect() as connection:
                state, attempts = connection.execute(select(Job.state, Job.attempts)).one()
            return (state, attempts) if state == JobState.DONE else None

        job = wait_for(finished, timeout_s=60)
        with session_factory(engine).begin() as session:  # three processes, one SIGKILLed
            checked, breaks = audit.verify(session)
        assert breaks == [] and checked == len(trail())
    finally:
        terminate(scp, first, second)
        engine.dispose()
    assert {kind: len(paths) for kind, paths in received.items()} == {"SEG": 1, "SR": 1}
    assert job == (JobState.DONE, 2)
    actions = [e.action for e in trail()]
    assert actions.count("job.started") == 1 and actions.count("job.reclaimed") == 1
    reclaimed = next(e for e in trail() if e.action == "job.reclaimed")
    started = next(e for e in trail() if e.action == "job.started")
    assert reclaimed.details["previous_worker"] == started.details["worker"]
