"""Export: send a job's result objects to every configured destination by C-STORE, recording
each delivery and its audit row."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from node.config import Destination
from node.db.engine import SessionFactory
from node.db.tables import Delivery, ResultObject, utcnow
from node.dicom.scu import SendOutcome, send_files
from node.dicom.status import is_success, is_warning
from node.errors import DeliveryError
from node.metrics import NodeMetrics
from node.services import audit

logger = logging.getLogger(__name__)

Sender = Callable[[Destination, list[Path], str], list[SendOutcome]]


class Exporter:
    def __init__(
        self,
        sessions: SessionFactory,
        storage_root: Path,
        destinations: tuple[Destination, ...],
        calling_ae: str,
        send: Sender = send_files,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._metrics = metrics or NodeMetrics()
        self._sessions = sessions
        self._root = storage_root
        self._destinations = destinations
        self._calling_ae = calling_ae
        self._send = send

    def export_job(self, job_id: int, study_instance_uid: str) -> None:
        """Deliver every result of ``job_id`` not yet delivered; raise :class:`DeliveryError`
        naming the destinations that failed, after recording every attempt."""
        with self._sessions.begin() as session:
            results = list(
                session.scalars(
                    select(ResultObject).where(ResultObject.job_id == job_id)
                    .order_by(ResultObject.id)
                )
            )
        failed: list[str] = []
        for destination in self._destinations:
            with self._sessions.begin() as session:
                delivered = set(
                    session.scalars(
                        select(Delivery.result_object_id).where(
                            Delivery.destination == destination.name,
                            Delivery.state == "delivered",
                        )
                    )
                )
            pending = [r for r in results if r.id not in delivered]
            if not pending:
                continue
            try:
                outcomes = self._send(
                    destination, [self._root / r.path for r in pending], self._calling_ae
                )
                by_uid = {o.sop_instance_uid: o.status for o in outcomes}
                error = None
            except (DeliveryError, OSError) as exc:
                by_uid, error = {}, str(exc)
            with self._sessions.begin() as session:
                for result in pending:
                    status = by_uid.get(result.sop_instance_uid)
                    ok = status is not None and (is_success(status) or is_warning(status))
                    self._record(session, result, destination, status, ok, error, job_id,
                                 study_instance_uid)
                    if not ok and destination.name not in failed:
                        failed.append(destination.name)
        if failed:
            raise DeliveryError(f"delivery failed to {', '.join(failed)}")

    def _record(
        self,
        session: Session,
        result: ResultObject,
        destination: Destination,
        status: int | None,
        ok: bool,
        error: str | None,
        job_id: int,
        study_instance_uid: str,
    ) -> None:
        delivery = session.scalar(
            select(Delivery).where(
                Delivery.result_object_id == result.id, Delivery.destination == destination.name
            )
        )
        if delivery is None:
            delivery = Delivery(
                result_object_id=result.id, destination=destination.name, attempts=0,
            )
            session.add(delivery)
        delivery.attempts = (delivery.attempts or 0) + 1
        delivery.state = "delivered" if ok else "failed"
        delivery.status = status
        delivery.error = None if ok else (error or f"status 0x{(status or 0):04X}")
        delivery.updated_at = utcnow()
        audit.record(
            session,
            "delivery.succeeded" if ok else "delivery.failed",
            study_instance_uid=study_instance_uid,
            series_instance_uid=result.series_instance_uid,
            sop_instance_uid=result.sop_instance_uid,
            job_id=job_id,
            destination=destination.name,
            ae_title=destination.ae_title,
            status=None if status is None else f"0x{status:04X}",
            error=delivery.error,
        )
        counter = self._metrics.deliveries if ok else self._metrics.delivery_failures
        counter.labels(destination=destination.name).inc()
        if not ok:
            logger.warning("delivery of %s to %s failed: %s", result.sop_instance_uid,
                           destination.name, delivery.error)
