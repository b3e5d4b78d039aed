"""The scheduler's completeness rules on a real database: early start on announced counts, a
T1 FLAIR that comes minutes after the T2 FLAIR, late instances that change nothing we read."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.package import default_package_dir
from node.db.engine import SessionFactory
from node.db.tables import AuditEvent, Instance, Job, Series, Study
from node.domain.completeness import CompletenessRules
from node.domain.jobs import JobState, StudyState
from node.services import registry
from node.services.scheduler import Scheduler
from tests.integration.test_queue import NOW, T2_ATTRIBUTES, add_study

T1_ATTRIBUTES = {**T2_ATTRIBUTES, "repetition_time": 2000.0, "echo_time": 9.0,
                 "inversion_time": 860.0}
LOCALIZER = {**T2_ATTRIBUTES, "scanning_sequence": ["GR"], "scan_options": [],
             "inversion_time": None, "echo_time": 4.0}
RULES = CompletenessRules(quiet_seconds=30, missing_wait_seconds=300, max_wait_seconds=1800)


def add_series(session: Session, study: Study, uid: str, attributes: dict[str, object],
               instances: int, received: datetime) -> None:
    series = Series(series_instance_uid=uid, study_id=study.id, modality="MR", series_number=None,
                    series_description="", attributes=attributes)
    session.add(series)
    session.flush()
    for n in range(instances):
        session.add(Instance(sop_instance_uid=f"{uid}.{n}", series_id=series.id,
                             sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                             transfer_syntax_uid="1.2.840.10008.1.2.1", instance_number=n + 1,
                             path=f"instances/{uid}.{n}.dcm", size_bytes=1, sha256="0" * 64,
                             received_at=received))
    study.last_received_at = max(study.last_received_at, received)


def run(sessions: SessionFactory, seconds: float) -> list[int]:
    return Scheduler(sessions, RULES, clock=lambda: NOW + timedelta(seconds=seconds)).run_once()


def audit_details(sessions: SessionFactory, action: str) -> list[dict[str, object]]:
    with sessions.begin() as session:
        return [event.details for event in
                session.scalars(select(AuditEvent).where(AuditEvent.action == action))]


def test_a_study_whose_flair_series_announced_their_counts_starts_without_the_quiet_period(
    sessions: SessionFactory,
) -> None:
    with sessions.begin() as session:
        registry.ensure_default(session, default_package_dir())
        study = add_study(session, "1.7.1", NOW, None)
        add_series(session, study, "1.7.1.2", {**T2_ATTRIBUTES, "expected_instances": 4}, 4, NOW)
        add_series(session, study, "1.7.1.3", {**T1_ATTRIBUTES, "expected_instances": 4}, 3, NOW)
    assert run(sessions, 1) == []  # one T1 FLAIR instance is missing
    with sessions.begin() as session:
        study = session.scalars(select(Study)).one()
        series = session.scalar(select(Series).where(Series.series_instance_uid == "1.7.1.3"))
        assert series is not None
        session.add(Instance(sop_instance_uid="1.7.1.3.9", series_id=series.id,
                             sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                             transfer_syntax_uid="1.2.840.10008.1.2.1", instance_number=4,
                             path="instances/x.dcm", size_bytes=1, sha256="0" * 64,
                             received_at=NOW + timedelta(seconds=2)))
        study.last_received_at = NOW + timedelta(seconds=2)
    [job_id] = run(sessions, 2)  # at once, 28 s before the quiet period would end
    [queued] = audit_details(sessions, "job.queued")
    with sessions.begin() as session:
        assert session.scalar(select(AuditEvent.job_id).where(AuditEvent.action == "job.queued")) \
            == job_id
    assert "every announced instance" in str(queued["completeness"])


def test_a_t1_flair_that_comes_minutes_later_is_paired_in_the_first_run(
    sessions: SessionFactory,
) -> None:
    with sessions.begin() as session:
        registry.ensure_default(session, default_package_dir())
        study = add_study(session, "1.7.2", NOW, None)
        add_series(session, study, "1.7.2.2", T2_ATTRIBUTES, 24, NOW)
    assert run(sessions, 40) == []  # quiet, but there is no T1 FLAIR yet
    assert run(sessions, 200) == []
    with sessions.begin() as session:
        study = session.scalars(select(Study)).one()
        add_series(session, study, "1.7.2.3", T1_ATTRIBUTES, 24, NOW + timedelta(seconds=240))
    assert run(sessions, 260) == []  # the T1 FLAIR's own quiet period
    [job_id] = run(sessions, 271)
    with sessions.begin() as session:
        roles = dict(session.execute(select(Series.series_instance_uid, Series.role)).all())
        assert roles == {"1.7.2.2": "T2_FLAIR", "1.7.2.3": "T1_FLAIR"}
        assert session.scalar(select(Job.run).where(Job.id == job_id)) == 1


def test_a_t2_flair_alone_is_processed_once_the_wait_for_its_partner_ends(
    sessions: SessionFactory,
) -> None:
    with sessions.begin() as session:
        registry.ensure_default(session, default_package_dir())
        study = add_study(session, "1.7.3", NOW, None)
        add_series(session, study, "1.7.3.2", T2_ATTRIBUTES, 24, NOW)
    assert run(sessions, 299) == []
    [_] = run(sessions, 300)
    [queued] = audit_details(sessions, "job.queued")
    assert "no T1 FLAIR yet after 300 s" in str(queued["completeness"])


def test_late_instances_of_a_series_we_ignore_do_not_rerun_the_study(
    sessions: SessionFactory,
) -> None:
    with sessions.begin() as session:
        registry.ensure_default(session, default_package_dir())
        study = add_study(session, "1.7.4", NOW, None)
        add_series(session, study, "1.7.4.2", T2_ATTRIBUTES, 24, NOW)
        add_series(session, study, "1.7.4.3", T1_ATTRIBUTES, 24, NOW)
    [first] = run(sessions, 30)
    with sessions.begin() as session:
        job = session.get(Job, first)
        assert job is not None
        job.state = JobState.DONE
        study = session.scalars(select(Study)).one()
        study.state = StudyState.RECEIVING  # what intake does for a late instance
        add_series(session, study, "1.7.4.4", LOCALIZER, 3, NOW + timedelta(seconds=100))
    assert run(sessions, 130) == []
    with sessions.begin() as session:
        assert session.scalars(select(Study.state)).one() == StudyState.SCHEDULED
        assert len(session.scalars(select(Job)).all()) == 1
    [late] = audit_details(sessions, "study.late_arrival")
    assert "3 late instance(s), none in a FLAIR series" in str(late["reason"])
