"""Export: queue each result object for every destination that takes its kind, and deliver
due deliveries by C-STORE or STOW-RS, recording each attempt with its audit row.

Many workers may deliver at once: a due delivery is claimed (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, a conditional UPDATE on both) by pushing its ``next_attempt_at`` ahead by a lease,
so a worker that dies while sending leaves it due again once the lease ends.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from node.config import Destination, WorkerSettings
from node.db.engine import SessionFactory
from node.db.tables import Delivery, Job, ResultObject, Study, utcnow
from node.dicom import dicomweb, scu
from node.dicom.outcome import SendOutcome
from node.dicom.status import is_success, is_warning
from node.domain.delivery import DeliveryState, after_attempt
from node.errors import DeliveryError
from node.metrics import NodeMetrics
from node.services import audit

logger = logging.getLogger(__name__)

Sender = Callable[[Destination, list[Path], str], list[SendOutcome]]
CLAIM_SECONDS = 300.0  # a claimed delivery is due again after this if its worker died


def send(destination: Destination, paths: list[Path], calling_ae: str) -> list[SendOutcome]:
    """Send ``paths`` to ``destination`` by its protocol: STOW-RS when it has a URL, else
    C-STORE. Raises :class:`DeliveryError` when the peer cannot be reached at all."""
    if destination.url:
        return dicomweb.store_files(destination, paths)
    return scu.send_files(destination, paths, calling_ae)


@dataclass(frozen=True)
class _Claimed:
    delivery_id: int
    destination: str
    path: Path
    sop_instance_uid: str
    series_instance_uid: str
    job_id: int
    study_instance_uid: str | None
    attempts: int


class Exporter:
    def __init__(
        self,
        sessions: SessionFactory,
        storage_root: Path,
        destinations: tuple[Destination, ...],
        calling_ae: str,
        settings: WorkerSettings | None = None,
        send_objects: Sender = send,
        metrics: NodeMetrics | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._metrics = metrics or NodeMetrics()
        self._sessions = sessions
        self._root = storage_root
        self._destinations = {d.name: d for d in destinations}
        self._calling_ae = calling_ae
        self._settings = settings or WorkerSettings()
        self._send = send_objects
        self._clock = clock

    @property
    def wanted_kinds(self) -> set[str]:
        """Every result kind some destination receives (SEG and SR are always built)."""
        return {kind for d in self._destinations.values() for kind in d.objects}

    def enqueue(self, job_id: int) -> int:
        """Queue every result of ``job_id`` for each destination that takes its kind; rows
        already there are kept (a retried job does not send twice). Returns rows added."""
        added = 0
        with self._sessions.begin() as session:
            results = list(session.scalars(
                select(ResultObject).where(ResultObject.job_id == job_id).order_by(ResultObject.id)))
            existing = set(session.execute(
                select(Delivery.result_object_id, Delivery.destination)
                .where(Delivery.result_object_id.in_([r.id for r in results]))).all())
            study_uid = session.scalar(select(Study.study_instance_uid).join(
                Job, Job.study_id == Study.id).where(Job.id == job_id))
            now = self._clock()
            for result in results:
                for destination in self._destinations.values():
                    if result.kind not in destination.objects or (result.id, destination.name) in existing:
                        continue
                    session.add(Delivery(result_object_id=result.id, destination=destination.name,
                                         state=DeliveryState.PENDING, attempts=0, updated_at=now,
                                         next_attempt_at=now))
                    audit.record(session, "delivery.queued", study_instance_uid=study_uid,
                                 series_instance_uid=result.series_instance_uid,
                                 sop_instance_uid=result.sop_instance_uid, job_id=job_id,
                                 destination=destination.name, protocol=destination.protocol,
                                 kind=result.kind)
                    added += 1
        return added

    def deliver_due(self, job_id: int | None = None, limit: int = 100) -> int:
        """Claim up to ``limit`` due pending deliveries (of ``job_id`` only, if given), send
        them grouped by destination, and record every attempt. Returns how many were tried."""
        claimed = self._claim(job_id, limit)
        by_destination: dict[str, list[_Claimed]] = {}
        for item in claimed:
            by_destination.setdefault(item.destination, []).append(item)
        for name, items in by_destination.items():
            destination = self._destinations.get(name)
            if destination is None:  # removed from the configuration since it was queued
                self._record_all(items, None, {}, "destination is no longer configured")
                continue
            try:
                outcomes = self._send(destination, [i.path for i in items], self._calling_ae)
                statuses = {o.sop_instance_uid: o.status for o in outcomes}
                error = None
            except (DeliveryError, OSError) as exc:
                statuses, error = {}, str(exc)
            except Exception as exc:  # the edge: any failure becomes an attempt on the record
                logger.exception("delivery to %s failed unexpectedly", name)
                statuses, error = {}, f"{type(exc).__name__}: {exc}"
            self._record_all(items, destination, statuses, error)
        return len(claimed)

    def _claim(self, job_id: int | None, limit: int) -> list[_Claimed]:
        now = self._clock()
        with self._sessions.begin() as session:
            query = (select(Delivery).where(Delivery.state == DeliveryState.PENDING,
                                            Delivery.next_attempt_at <= now)
                     .order_by(Delivery.id).limit(limit).with_for_update(skip_locked=True))
            if job_id is not None:
                query = query.where(Delivery.result_object_id.in_(
                    select(ResultObject.id).where(ResultObject.job_id == job_id)))
            deliveries = list(session.scalars(query))
            if not deliveries:
                return []
            rows = {r.id: r for r in session.scalars(select(ResultObject).where(
                ResultObject.id.in_([d.result_object_id for d in deliveries])))}
            studies = dict(session.execute(
                select(Job.id, Study.study_instance_uid).join(Study, Study.id == Job.study_id)
                .where(Job.id.in_({r.job_id for r in rows.values()}))).all())
            claimed = []
            for delivery in deliveries:
                # SQLite ignores the lock clause: the conditional UPDATE (still pending and due)
                # makes the claim atomic there, since SQLite serialises writers.
                taken = session.execute(
                    update(Delivery)
                    .where(Delivery.id == delivery.id, Delivery.state == DeliveryState.PENDING,
                           Delivery.next_attempt_at <= now)
                    .values(next_attempt_at=now + timedelta(seconds=CLAIM_SECONDS))
                    .execution_options(synchronize_session=False))
                if taken.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                result = rows[delivery.result_object_id]
                claimed.append(_Claimed(
                    delivery.id, delivery.destination, self._root / result.path,
                    result.sop_instance_uid, result.series_instance_uid, result.job_id,
                    studies.get(result.job_id), delivery.attempts))
            return claimed

    def _record_all(self, items: list[_Claimed], destination: Destination | None,
                    statuses: dict[str, int | None], error: str | None) -> None:
        with self._sessions.begin() as session:
            for item in items:
                self._record(session, item, destination, statuses.get(item.sop_instance_uid), error)

    def _record(self, session: Session, item: _Claimed, destination: Destination | None,
                status: int | None, error: str | None) -> None:
        delivery = session.get(Delivery, item.delivery_id, with_for_update=True)
        if delivery is None or delivery.state != DeliveryState.PENDING:
            return  # re-queued or removed meanwhile
        ok = status is not None and (is_success(status) or is_warning(status))
        delivery.attempts = (delivery.attempts or 0) + 1
        outcome = after_attempt(delivery.attempts, ok, self._settings.delivery_max_attempts,
                                self._settings.retry_base_seconds, self._settings.retry_max_seconds,
                                random.random())
        now = self._clock()
        delivery.state = outcome.state
        delivery.status = status
        if ok:
            delivery.error = None
        elif status is not None:
            delivery.error = f"status 0x{status:04X}"
        else:
            delivery.error = error or "no response"
        delivery.updated_at = now
        delivery.next_attempt_at = (None if outcome.retry_in_seconds is None
                                    else now + timedelta(seconds=outcome.retry_in_seconds))
        action = {DeliveryState.DELIVERED: "delivery.succeeded", DeliveryState.PENDING: "delivery.failed",
                  DeliveryState.DEAD: "delivery.dead_lettered"}[outcome.state]
        audit.record(
            session, action, study_instance_uid=item.study_instance_uid,
            series_instance_uid=item.series_instance_uid, sop_instance_uid=item.sop_instance_uid,
            job_id=item.job_id, destination=item.destination,
            address=destination.address if destination else None,
            protocol=destination.protocol if destination else None,
            attempt=delivery.attempts, status=None if status is None else f"0x{status:04X}",
            error=delivery.error,
            retry_in_seconds=None if outcome.retry_in_seconds is None else round(outcome.retry_in_seconds, 1),
        )
        counter = self._metrics.deliveries if ok else self._metrics.delivery_failures
        counter.labels(destination=item.destination).inc()
        if not ok:
            logger.warning("delivery %d of %s to %s failed (attempt %d, now %s): %s",
                           item.delivery_id, item.sop_instance_uid, item.destination,
                           delivery.attempts, outcome.state, delivery.error)


def delivery_counts(session: Session, job_id: int) -> dict[str, int]:
    """How many of ``job_id``'s deliveries are in each state."""
    rows = session.execute(
        select(Delivery.state, func.count()).join(ResultObject, ResultObject.id == Delivery.result_object_id)
        .where(ResultObject.job_id == job_id).group_by(Delivery.state))
    return {str(state): int(count) for state, count in rows}


def requeue_dead(session: Session, delivery_ids: list[int] | None, destination: str | None,
                 actor: str, now: datetime) -> list[int]:
    """Make dead deliveries (all, those of ``delivery_ids``, and/or of ``destination``)
    pending again with a fresh set of attempts, due at once; one audit row each."""
    query = select(Delivery).where(Delivery.state == DeliveryState.DEAD).with_for_update()
    if delivery_ids:
        query = query.where(Delivery.id.in_(delivery_ids))
    if destination:
        query = query.where(Delivery.destination == destination)
    requeued = []
    for delivery in session.scalars(query.order_by(Delivery.id)):
        result = session.get(ResultObject, delivery.result_object_id)
        job = session.get(Job, result.job_id) if result else None
        study = session.get(Study, job.study_id) if job else None
        previous = delivery.attempts
        delivery.state, delivery.attempts = DeliveryState.PENDING, 0
        delivery.next_attempt_at = delivery.updated_at = now
        audit.record(session, "delivery.requeued", actor=actor,
                     study_instance_uid=study.study_instance_uid if study else None,
                     sop_instance_uid=result.sop_instance_uid if result else None,
                     job_id=result.job_id if result else None, destination=delivery.destination,
                     previous_attempts=previous, last_error=delivery.error)
        requeued.append(delivery.id)
    return requeued


def recent_deliveries(session: Session, state: str | None, destination: str | None,
                      limit: int) -> list[tuple[Delivery, ResultObject]]:
    """The newest ``limit`` deliveries (in ``state``, to ``destination``, if given), newest
    first, each with the result object it sends."""
    query = (select(Delivery, ResultObject)
             .join(ResultObject, ResultObject.id == Delivery.result_object_id)
             .order_by(Delivery.id.desc()).limit(limit))
    if state:
        query = query.where(Delivery.state == state)
    if destination:
        query = query.where(Delivery.destination == destination)
    return [(delivery, result) for delivery, result in session.execute(query).all()]
