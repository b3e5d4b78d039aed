"""The node's side of a DICOM receiver: the storage port (intake, with an audit row and a
metric for every refusal) and the association events sink (audit rows and metrics)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from node.db.engine import SessionFactory
from node.dicom.ports import ReceivedInstance
from node.dicom.status import Status
from node.errors import InstanceRejected, StorageError
from node.metrics import NodeMetrics
from node.services import audit
from node.services.intake import Intake, StoredInstance

logger = logging.getLogger(__name__)


class NodeReception:
    """Implements :class:`node.dicom.ports.Reception` for every receiver engine."""

    def __init__(self, intake: Intake, sessions: SessionFactory,
                 metrics: NodeMetrics | None = None) -> None:
        self._intake = intake
        self._sessions = sessions
        self._metrics = metrics or NodeMetrics()

    def store(self, received: ReceivedInstance) -> int:
        """Answer success only after the instance is durably stored and indexed."""
        try:
            outcome: StoredInstance | Exception = self._intake.store(received)
        except Exception as error:
            outcome = error
        return self._status(received, outcome)

    def store_many(self, batch: Sequence[ReceivedInstance]) -> list[int]:
        """As :meth:`store`, per instance, for several at once (indexed in one transaction)."""
        try:
            outcomes = self._intake.store_many(batch)
        except Exception as error:  # the edge: never success for what may not be stored
            outcomes = [error] * len(batch)
        return [self._status(received, outcome)
                for received, outcome in zip(batch, outcomes, strict=True)]

    def _status(self, received: ReceivedInstance, outcome: StoredInstance | Exception) -> int:
        """The C-STORE status for what intake did with ``received``; refusals audited."""
        if isinstance(outcome, InstanceRejected):
            logger.warning("refused %s from %s: %s", received.affected_sop_instance_uid,
                           received.calling_ae, outcome.reason)
            return self._refuse(received, Status(outcome.status), outcome.reason)
        if isinstance(outcome, StorageError):
            logger.error("cannot store %s: %s", received.affected_sop_instance_uid, outcome)
            return self._refuse(received, Status.OUT_OF_RESOURCES, str(outcome))
        if isinstance(outcome, Exception):  # any other failure: a failure status, never success
            logger.error("failed to store %s", received.affected_sop_instance_uid,
                         exc_info=outcome)
            return self._refuse(received, Status.PROCESSING_FAILURE, "internal error")
        self._metrics.instances_received.labels(duplicate=str(outcome.duplicate).lower()).inc()
        self._metrics.bytes_received.inc(received.size)
        logger.debug("stored %s (duplicate=%s)", outcome.sop_instance_uid, outcome.duplicate)
        return Status.SUCCESS

    def _refuse(self, received: ReceivedInstance, status: Status, reason: str) -> int:
        self._metrics.rejections.labels(reason=status.name.lower()).inc()
        try:
            with self._sessions.begin() as session:
                audit.record(
                    session,
                    "instance.refused",
                    calling_ae=received.calling_ae,
                    peer_address=received.peer_address,
                    sop_instance_uid=received.affected_sop_instance_uid[:64] or None,
                    status=f"0x{status:04X}",
                    reason=reason[:500],
                )
        except Exception:  # auditing a refusal must not turn it into a crash
            logger.exception("could not audit a refused instance")
        return int(status)

    def association_accepted(self, calling_ae: str, peer_address: str) -> None:
        self._metrics.associations.labels(outcome="accepted").inc()
        with self._sessions.begin() as session:
            audit.record(session, "association.accepted", calling_ae=calling_ae,
                         peer_address=peer_address)

    def association_rejected(self, calling_ae: str, peer_address: str,
                             reason: str | None = None) -> None:
        self._metrics.associations.labels(outcome="rejected").inc()
        with self._sessions.begin() as session:
            if reason:
                audit.record(session, "association.rejected", calling_ae=calling_ae,
                             peer_address=peer_address, reason=reason)
            else:
                audit.record(session, "association.rejected", calling_ae=calling_ae,
                             peer_address=peer_address)

    def association_aborted(self, calling_ae: str, peer_address: str, reason: str) -> None:
        self._metrics.associations.labels(outcome="aborted").inc()
        with self._sessions.begin() as session:
            audit.record(session, "association.aborted", calling_ae=calling_ae or None,
                         peer_address=peer_address, reason=reason[:500])
