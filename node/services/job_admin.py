"""Admin actions on jobs: list and show them, retry a failed or cancelled job, cancel a queued
or failed one."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from node.db.tables import Job, ModelVersion, ResultObject, Study
from node.domain.jobs import InvalidTransition, JobState, check_transition
from node.errors import JobError
from node.services import audit


def _transition(session: Session, job_id: int, target: JobState, action: str, actor: str) -> Job:
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise LookupError(f"no job {job_id}")
    try:
        check_transition(JobState(job.state), target)
    except InvalidTransition as error:
        raise JobError(str(error)) from None
    previous = job.state
    job.state = target
    job.not_before = None
    if target is JobState.QUEUED:
        job.attempts = 0  # a fresh budget of attempts
        job.error = None
    study = session.get(Study, job.study_id)
    audit.record(session, action, actor=actor, job_id=job.id, previous=previous,
                 study_instance_uid=study.study_instance_uid if study else None)
    return job


def retry_job(session: Session, job_id: int, actor: str) -> Job:
    return _transition(session, job_id, JobState.QUEUED, "job.retried", actor)


def cancel_job(session: Session, job_id: int, actor: str) -> Job:
    return _transition(session, job_id, JobState.CANCELLED, "job.cancelled", actor)


def recent_jobs(session: Session, limit: int) -> list[tuple[Job, str, str, str]]:
    """The newest ``limit`` jobs, newest first: (job, StudyInstanceUID, model name, version)."""
    rows = session.execute(
        select(Job, Study.study_instance_uid, ModelVersion.name, ModelVersion.version)
        .join(Study, Job.study_id == Study.id)
        .join(ModelVersion, Job.model_version_id == ModelVersion.id)
        .order_by(Job.id.desc()).limit(limit)
    ).all()
    return [(job, study_uid, name, version) for job, study_uid, name, version in rows]


def job_with_results(session: Session, job_id: int) -> tuple[Job, list[ResultObject]]:
    """One job and the result objects it made; LookupError when there is no such job."""
    job = session.get(Job, job_id)
    if job is None:
        raise LookupError(f"no job {job_id}")
    return job, list(session.scalars(select(ResultObject).where(ResultObject.job_id == job.id)))
