"""SIGTERM lets a worker finish or release its job; a node killed in the middle of a study
keeps every instance it answered success for. On SQLite and on PostgreSQL, as processes."""

from __future__ import annotations

import hashlib
import signal
import threading
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage
from sqlalchemy import Engine, func, select

from harness.peers import free_port
from node.db.engine import build_engine, session_factory
from node.db.tables import AuditEvent, Instance, Job
from node.dicom.status import Status
from node.domain.jobs import JobState
from node.services import audit
from tests.conftest import wait_for
from tests.e2e.conftest import Pacs, listening, node_environment, spawn, storescu, terminate

pytestmark = pytest.mark.e2e


def actions(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def job_row(engine: Engine) -> tuple[str, int, str | None]:
    with engine.connect() as connection:
        state, attempts, owner = connection.execute(
            select(Job.state, Job.attempts, Job.lease_owner)).one()
    return state, attempts, owner


def test_sigterm_releases_or_finishes_the_running_job(
    tmp_path: Path, pacs: Pacs, synthetic_study, database_url: str  # type: ignore[no-untyped-def]
) -> None:
    port = free_port()
    environment = node_environment(tmp_path, port, pacs, database_url)
    engine = build_engine(database_url)
    scp = spawn("scp", environment)
    impatient = spawn("worker", {**environment, "LACUNA_WORKER_SHUTDOWN_GRACE_SECONDS": "0"})
    patient = None
    try:
        wait_for(lambda: listening(port), timeout_s=180)
        assert storescu(port, synthetic_study.folder).returncode == 0
        wait_for(lambda: "job.started" in actions(engine), timeout_s=240, interval_s=0.02)
        impatient.send_signal(signal.SIGTERM)  # no grace: it gives the job back
        assert impatient.wait(timeout=120) == 0
        assert "job.released" in actions(engine)
        state, attempts, owner = job_row(engine)
        assert (state, attempts, owner) == (JobState.QUEUED, 1, None)  # nothing half-claimed

        patient = spawn("worker", environment)  # default grace: it finishes the job
        wait_for(lambda: actions(engine).count("job.started") == 2, timeout_s=240, interval_s=0.02)
        patient.send_signal(signal.SIGTERM)
        assert patient.wait(timeout=180) == 0
        assert job_row(engine) == (JobState.DONE, 2, None)
        received = pacs.received()
    finally:
        terminate(scp, impatient, patient)
        engine.dispose()
    assert {kind: len(paths) for kind, paths in received.items()} == {"SEG": 1, "SR": 1}
    trail = actions(engine)
    assert trail.count("job.released") == 1 and trail.count("job.finished") == 1
    assert "job.lease_lost" not in trail


def test_a_node_killed_mid_study_keeps_every_acknowledged_instance(
    tmp_path: Path, pacs: Pacs, synthetic_study, database_url: str  # type: ignore[no-untyped-def]
) -> None:
    files = sorted(synthetic_study.folder.rglob("*.dcm"))
    port = free_port()
    environment = node_environment(tmp_path, port, pacs, database_url)
    root = Path(environment["LACUNA_STORAGE_ROOT"])
    engine = build_engine(database_url)
    acknowledged: list[Path] = []

    def send_all() -> None:
        """A scanner sending one instance after another, noting which got a success status."""
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="LACUNA")
        try:
            for path in files:
                try:
                    status = assoc.send_c_store(pydicom.dcmread(path))
                except (RuntimeError, OSError):  # the node died under us
                    return
                if "Status" in status and int(status.Status) == Status.SUCCESS:
                    acknowledged.append(path)
        finally:
            if assoc.is_established:
                assoc.abort()

    node = spawn("scp", environment)
    worker = None
    try:
        wait_for(lambda: listening(port), timeout_s=180)
        sender = threading.Thread(target=send_all)
        sender.start()
        wait_for(lambda: len(acknowledged) >= len(files) // 3, timeout_s=120, interval_s=0.005)
        node.kill()  # SIGKILL: mid-study, mid-association
        node.wait()
        sender.join(timeout=60)
        assert 0 < len(acknowledged) < len(files)

        node = spawn("scp", environment)  # restart: what was acknowledged is there
        wait_for(lambda: listening(port), timeout_s=180)
        with engine.connect() as connection:
            indexed = {uid: (path, digest) for uid, path, digest in connection.execute(
                select(Instance.sop_instance_uid, Instance.path, Instance.sha256))}
        for path in acknowledged:
            sent = pydicom.dcmread(path)
            assert str(sent.SOPInstanceUID) in indexed, "an acknowledged instance was lost"
            relative, digest = indexed[str(sent.SOPInstanceUID)]
            stored = (root / relative).read_bytes()
            assert hashlib.sha256(stored).hexdigest() == digest  # whole, as indexed
            assert pydicom.dcmread(root / relative).PixelData == sent.PixelData

        # The scanner re-sends the study; re-sent instances are idempotent.
        assert storescu(port, synthetic_study.folder).returncode == 0
        worker = spawn("worker", environment)
        wait_for(lambda: "job.finished" in actions(engine), timeout_s=240)
        received = pacs.received()
        with engine.connect() as connection:
            instances = connection.scalar(select(func.count()).select_from(Instance))
            jobs = connection.scalar(select(func.count()).select_from(Job))
        with session_factory(engine).begin() as session:  # SIGKILL left no half-chained event
            assert audit.verify(session)[1] == []
    finally:
        terminate(node, worker)
        engine.dispose()
    assert instances == len(files)
    assert jobs == 1  # processed once, after it was whole and quiet
    assert {kind: len(paths) for kind, paths in received.items()} == {"SEG": 1, "SR": 1}
