"""Scheduling and claiming on SQLite and real PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from models.package import default_package_dir
from node.db.jobs import claim_next_job, renew_lease
from node.db.tables import AuditEvent, Instance, Job, Patient, Series, Study
from node.domain.completeness import CompletenessRules
from node.domain.jobs import JobState, StudyState
from node.domain.priority import ROUTINE, URGENT
from node.errors import JobError
from node.services import registry
from node.services.job_admin import cancel_job, retry_job
from node.services.scheduler import Scheduler
from tests.integration.fake_pipeline_worker import FakeProcessor

T2_ATTRIBUTES = {
    "modality": "MR", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.4",
    "image_type": ["ORIGINAL", "PRIMARY"], "scanning_sequence": ["SE", "IR"],
    "scan_options": ["IR"], "repetition_time": 9000.0, "echo_time": 120.0,
    "inversion_time": 2500.0,
}

QUIET_30 = CompletenessRules(quiet_seconds=30, missing_wait_seconds=0)


NOW = datetime(2026, 3, 1, tzinfo=UTC)


def add_study(session, uid: str, received: datetime, attributes: dict | None) -> Study:  # type: ignore[no-untyped-def]
    patient = session.scalar(select(Patient).where(Patient.patient_id == "P")) or Patient(
        patient_id="P")
    session.add(patient)
    session.flush()
    study = Study(study_instance_uid=uid, patient_id=patient.id, accession_number="",
                  study_date="", state=StudyState.RECEIVING, first_received_at=received,
                  last_received_at=received)
    session.add(study)
    session.flush()
    if attributes is not None:
        session.add(Series(series_instance_uid=f"{uid}.1", study_id=study.id, modality="MR",
                           series_number=1, series_description="", attributes=attributes))
    return study


def test_scheduler_waits_for_the_quiet_period_then_queues_one_job(sessions) -> None:  # type: ignore[no-untyped-def]
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    with sessions.begin() as session:
        registry.ensure_default(session, default_package_dir())
        add_study(session, "1.2.1", now - timedelta(seconds=5), T2_ATTRIBUTES)
        add_study(session, "1.2.2", now - timedelta(seconds=60), T2_ATTRIBUTES)
        add_study(session, "1.2.3", now - timedelta(seconds=60), {**T2_ATTRIBUTES, "modality": "CT"})

    assert len(Scheduler(sessions, QUIET_30, clock=lambda: now).run_once()) == 1
    assert Scheduler(sessions, QUIET_30, clock=lambda: now).run_once() == []  # idempotent
    with sessions.begin() as session:
        states = dict(session.execute(select(Study.study_instance_uid, Study.state)).all())
        assert states == {"1.2.1": StudyState.RECEIVING, "1.2.2": StudyState.SCHEDULED,
                          "1.2.3": StudyState.NOT_PROCESSABLE}
        actions = list(session.scalars(select(AuditEvent.action)))
        assert actions.count("job.queued") == 1
        assert "series.ignored" in actions and "study.not_processable" in actions


def test_concurrent_claims_never_take_one_job_twice(sessions) -> None:  # type: ignore[no-untyped-def]
    now = NOW
    with sessions.begin() as session:
        model = registry.ensure_default(session, default_package_dir())
        assert model is not None
        for n in range(20):
            study = add_study(session, f"1.3.{n}", now, None)
            session.add(Job(study_id=study.id, model_version_id=model.id, state=JobState.QUEUED,
                            attempts=0, created_at=now))

    claimed: list[int] = []
    lock = threading.Lock()

    def drain() -> None:
        while True:
            with sessions.begin() as session:
                claim = claim_next_job(session, threading.current_thread().name, now, 60)
                if claim is None:
                    return
                with lock:
                    claimed.append(claim.job.id)

    threads = [threading.Thread(target=drain) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(claimed) == sorted(set(claimed))
    assert len(claimed) == 20
    with sessions.begin() as session:
        assert set(session.scalars(select(Job.state))) == {JobState.RUNNING}


def queued_job(sessions, now: datetime) -> int:  # type: ignore[no-untyped-def]
    with sessions.begin() as session:
        model = registry.ensure_default(session, default_package_dir())
        assert model is not None
        study = add_study(session, "1.4.1", now, None)
        job = Job(study_id=study.id, model_version_id=model.id, state=JobState.QUEUED,
                  attempts=0, created_at=now)
        session.add(job)
        session.flush()
        return job.id


def test_an_expired_lease_makes_the_job_claimable_again(sessions) -> None:  # type: ignore[no-untyped-def]
    now = NOW
    job_id = queued_job(sessions, now)
    with sessions.begin() as session:
        first = claim_next_job(session, "worker-a", now, lease_seconds=30)
        assert first is not None and first.previous_owner is None
    with sessions.begin() as session:  # still leased: nobody else gets it
        assert claim_next_job(session, "worker-b", now + timedelta(seconds=20), 30) is None
    with sessions.begin() as session:  # renewed by its owner only
        assert renew_lease(session, job_id, "worker-a", now + timedelta(seconds=20), 30)
        assert not renew_lease(session, job_id, "worker-b", now + timedelta(seconds=20), 30)
    with sessions.begin() as session:
        assert claim_next_job(session, "worker-b", now + timedelta(seconds=45), 30) is None
    with sessions.begin() as session:
        second = claim_next_job(session, "worker-b", now + timedelta(seconds=51), 30)
        assert second is not None and second.previous_owner == "worker-a"
        assert (second.job.attempts, second.job.lease_owner) == (2, "worker-b")


def test_a_retry_waits_for_its_time(sessions) -> None:  # type: ignore[no-untyped-def]
    now = NOW
    job_id = queued_job(sessions, now)
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.not_before = now + timedelta(seconds=10)
    with sessions.begin() as session:
        assert claim_next_job(session, "w", now + timedelta(seconds=9), 30) is None
    with sessions.begin() as session:
        assert claim_next_job(session, "w", now + timedelta(seconds=10), 30) is not None


def test_admin_retry_and_cancel_are_audited_and_guarded(sessions) -> None:  # type: ignore[no-untyped-def]
    now = NOW
    job_id = queued_job(sessions, now)
    with sessions.begin() as session:
        assert cancel_job(session, job_id, "admin:test").state == JobState.CANCELLED
    with sessions.begin() as session, pytest.raises(JobError, match="cancelled to cancelled"):
        cancel_job(session, job_id, "admin:test")
    with sessions.begin() as session:
        job = retry_job(session, job_id, "admin:test")
        assert (job.state, job.attempts) == (JobState.QUEUED, 0)
    with sessions.begin() as session, pytest.raises(LookupError, match="no job 999"):
        retry_job(session, 999, "admin:test")
    with sessions.begin() as session:
        rows = session.execute(
            select(AuditEvent.action, AuditEvent.actor).where(AuditEvent.job_id == job_id)
        ).all()
    assert [tuple(row) for row in rows] == [("job.cancelled", "admin:test"),
                                            ("job.retried", "admin:test")]


def add_instance(session, study: Study, uid: str, received: datetime) -> None:  # type: ignore[no-untyped-def]
    series = session.scalar(select(Series).where(Series.study_id == study.id))
    session.add(Instance(sop_instance_uid=uid, series_id=series.id,
                         sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                         transfer_syntax_uid="1.2.840.10008.1.2.1", instance_number=1,
                         path=f"instances/{uid}.dcm", size_bytes=1, sha256="0" * 64,
                         received_at=received))


def test_urgent_jobs_are_claimed_before_older_routine_ones(sessions) -> None:  # type: ignore[no-untyped-def]
    now = NOW
    with sessions.begin() as session:
        registry.ensure_default(session, default_package_dir())
        add_study(session, "1.5.1", now - timedelta(seconds=90), T2_ATTRIBUTES)
        urgent = add_study(session, "1.5.2", now - timedelta(seconds=60), T2_ATTRIBUTES)
        urgent.urgent = True
        add_study(session, "1.5.3", now - timedelta(seconds=60), T2_ATTRIBUTES)
    Scheduler(sessions, QUIET_30, clock=lambda: now).run_once()
    order = []
    for _ in range(3):
        with sessions.begin() as session:
            claim = claim_next_job(session, "w", now, 60)
            assert claim is not None
            study = session.get(Study, claim.job.study_id)
            assert study is not None
            order.append((study.study_instance_uid, claim.job.priority))
    assert order == [("1.5.2", URGENT), ("1.5.1", ROUTINE), ("1.5.3", ROUTINE)]


def test_a_late_arrival_queues_a_run_that_supersedes_the_finished_one(sessions) -> None:  # type: ignore[no-untyped-def]
    now = NOW
    with sessions.begin() as session:
        registry.ensure_default(session, default_package_dir())
        study = add_study(session, "1.6.1", now - timedelta(seconds=60), T2_ATTRIBUTES)
        add_instance(session, study, "1.6.1.1.1", now - timedelta(seconds=60))
    [first] = Scheduler(sessions, QUIET_30, clock=lambda: now).run_once()
    with sessions.begin() as session:
        job = session.get(Job, first)
        assert job is not None
        job.state = JobState.DONE
        study = session.scalars(select(Study)).one()
        # What intake does when an instance arrives for a scheduled study.
        study.state, study.last_received_at = StudyState.RECEIVING, now + timedelta(seconds=10)
        add_instance(session, study, "1.6.1.1.2", now + timedelta(seconds=10))
        add_instance(session, study, "1.6.1.1.3", now + timedelta(seconds=10))

    later = now + timedelta(seconds=45)
    [second] = Scheduler(sessions, QUIET_30, clock=lambda: later).run_once()
    with sessions.begin() as session:
        rerun = session.get(Job, second)
        assert rerun is not None
        assert (rerun.run, rerun.supersedes_job_id, rerun.state) == (2, first, JobState.QUEUED)
        queued = session.scalars(select(AuditEvent).where(AuditEvent.job_id == second)).one()
        assert queued.action == "job.queued"
        assert "late arrival: 2 instance(s) received after run 1" in queued.details["reason"]

        # More instances before run 2 started: run 2 will read them; no run 3.
        study = session.scalars(select(Study)).one()
        study.state, study.last_received_at = StudyState.RECEIVING, later
        add_instance(session, study, "1.6.1.1.4", later)
    assert Scheduler(sessions, QUIET_30, clock=lambda: later + timedelta(seconds=31)).run_once() == []
    with sessions.begin() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 2
        actions = list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))
        assert actions[-1] == "study.late_arrival"


def test_a_worker_whose_job_was_taken_over_exports_nothing(sessions) -> None:  # type: ignore[no-untyped-def]
    """The lease fences effects: a slow worker whose job another worker took over (or that
    released it at shutdown) neither sends results nor changes the job."""
    from types import SimpleNamespace

    from node.config import WorkerSettings
    from node.services.processing import RunReport
    from node.services.worker import Worker

    job_id = queued_job(sessions, datetime.now(UTC))
    exported: list[int] = []

    class TakenOverMidRun(FakeProcessor):
        def run(self, job_id: int, inputs: SimpleNamespace, owner: str) -> RunReport:
            with sessions.begin() as session:  # meanwhile, another worker reclaims the job
                job = session.get(Job, job_id)
                job.lease_owner = "worker-b"
            return RunReport()

    class Exporter:
        def enqueue(self, job_id: int) -> int:
            exported.append(job_id)
            return 0

    worker = Worker(sessions, TakenOverMidRun(), Exporter(), WorkerSettings(), owner="worker-a")  # type: ignore[arg-type]
    assert worker.run_once() is not None
    assert exported == []
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        assert (job.state, job.lease_owner) == (JobState.RUNNING, "worker-b")
        lost = session.scalars(select(AuditEvent).where(AuditEvent.action == "job.lease_lost")).one()
        assert lost.details["current_worker"] == "worker-b"


def test_release_gives_the_running_job_back(sessions) -> None:  # type: ignore[no-untyped-def]
    import threading as _threading
    from types import SimpleNamespace

    from node.config import WorkerSettings
    from node.services.processing import RunReport
    from node.services.worker import Worker

    job_id = queued_job(sessions, datetime.now(UTC))
    running, release_done = _threading.Event(), _threading.Event()

    class Slow(FakeProcessor):
        def run(self, job_id: int, inputs: SimpleNamespace, owner: str) -> RunReport:
            running.set()
            release_done.wait(10)
            return RunReport()

    class Exporter:
        def enqueue(self, job_id: int) -> int:
            raise AssertionError("a released job must not be exported by its old worker")

    worker = Worker(sessions, Slow(), Exporter(), WorkerSettings(), owner="worker-a")  # type: ignore[arg-type]
    thread = _threading.Thread(target=worker.run_once)
    thread.start()
    assert running.wait(10)
    assert worker.release_current("shutdown: test") == job_id
    release_done.set()
    thread.join(10)
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        assert (job.state, job.lease_owner, job.attempts) == (JobState.QUEUED, None, 1)
        actions = list(session.scalars(select(AuditEvent.action).where(AuditEvent.job_id == job_id)
                                       .order_by(AuditEvent.id)))
    # The release is what happened: no lease_lost, no failure after it.
    assert actions == ["job.started", "job.released"]
    assert worker.release_current("again") is None  # nothing running
    with sessions.begin() as session:
        assert session.get(Job, job_id).state == JobState.QUEUED
    assert worker.run_once() is None  # a released worker claims nothing more, not even its job
