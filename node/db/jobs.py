"""The job claim and its lease: safe for several workers on PostgreSQL and on SQLite."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from node.db.tables import Job
from node.domain.jobs import JobState
from node.errors import LeaseLost

CLAIM_ATTEMPTS = 3


@dataclass(frozen=True)
class Claim:
    job: Job
    previous_owner: str | None  # set when the job was reclaimed from an expired lease


def _due(now: datetime) -> ColumnElement[bool]:
    return and_(Job.state == JobState.QUEUED, or_(Job.not_before.is_(None), Job.not_before <= now))


def _expired(now: datetime) -> ColumnElement[bool]:
    return and_(Job.state == JobState.RUNNING, Job.lease_expires_at < now)


def _claimable(now: datetime) -> ColumnElement[bool]:
    return or_(_due(now), _expired(now))


def claim_next_job(
    session: Session, owner: str, now: datetime, lease_seconds: float
) -> Claim | None:
    """Take the next claimable job: first one whose lease expired (its worker died; it is
    late already), else the next queued and due one, the lowest priority number first (urgent
    before routine), then the oldest. Two queries, because each then walks an index
    (``ix_jobs_claim_order``) instead of sorting every queued row. Mark
    it running under a lease held by ``owner``, and return it; None when there is none.

    PostgreSQL: ``FOR UPDATE SKIP LOCKED`` lets concurrent workers pass each other's locked
    rows. SQLite ignores the lock clause; there the conditional UPDATE (the row must still be
    claimable) makes the claim atomic, since SQLite serialises writers.
    """
    for _ in range(CLAIM_ATTEMPTS):
        candidate = None
        for claimable in (_expired(now), _due(now)):
            candidate = session.scalar(
                select(Job).where(claimable).order_by(Job.priority, Job.id).limit(1)
                .with_for_update(skip_locked=True)
            )
            if candidate is not None:
                break
        if candidate is None:
            return None
        previous_owner = candidate.lease_owner if candidate.state == JobState.RUNNING else None
        claimed = session.execute(
            update(Job)
            .where(Job.id == candidate.id, _claimable(now))
            .values(
                state=JobState.RUNNING, started_at=now, attempts=Job.attempts + 1,
                lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds),
                not_before=None,
            )
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount == 1:  # type: ignore[attr-defined]
            session.refresh(candidate)
            return Claim(candidate, previous_owner)
        # SQLite: another process claimed it between our read and our write; our write
        # transaction has begun now, so the next read sees its claim.
    return None


def renew_lease(
    session: Session, job_id: int, owner: str, now: datetime, lease_seconds: float
) -> bool:
    """Extend ``owner``'s lease; False if the job is no longer running under it."""
    renewed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.lease_owner == owner)
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return bool(renewed.rowcount == 1)  # type: ignore[attr-defined]


def holds_lease(session: Session, job_id: int, owner: str) -> bool:
    """Whether ``owner`` still holds ``job_id``; locks the row until the transaction ends, so
    an effect recorded in the same transaction is fenced against a takeover."""
    job = session.get(Job, job_id, with_for_update=True, populate_existing=True)
    return job is not None and job.state == JobState.RUNNING and job.lease_owner == owner


def require_lease(session: Session, job_id: int, owner: str) -> None:
    """:func:`holds_lease`, or :class:`LeaseLost`: call before an effect of the job."""
    if not holds_lease(session, job_id, owner):
        raise LeaseLost(f"job {job_id} is no longer held by {owner}")
