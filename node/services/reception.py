"""The node's side of a DICOM receiver: the storage port (intake, with an audit row and a
metric for every refusal) and the association events sink (audit rows and metrics)."""

from __future__ import annotations

import logging

from node.db.engine import SessionFactory
from node.dicom.ports import ReceivedInstance
from node.dicom.status import Status
from node.errors import InstanceRejected, StorageError
from node.metrics import NodeMetrics
from node.services import audit
from node.services.intake import Intake

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
        size = received.size
        try:
            stored = self._intake.store(received)
        except InstanceRejected as error:
            logger.warning("refused %s from %s: %s", received.affected_sop_instance_uid,
                           received.calling_ae, error.reason)
            return self._refuse(received, Status(error.status), error.reason)
        except StorageError as error:
            logger.error("cannot store %s: %s", received.affected_sop_instance_uid, error)
            return self._refuse(received, Status.OUT_OF_RESOURCES, str(error))
        except Exception:  # the edge: any other failure becomes a failure status, never success
            logger.exception("failed to store %s", received.affected_sop_instance_uid)
            return self._refuse(received, Status.PROCESSING_FAILURE, "internal error")
        self._metrics.instances_received.labels(duplicate=str(stored.duplicate).lower()).inc()
        self._metrics.bytes_received.inc(size)
        logger.debug("stored %s (duplicate=%s)", stored.sop_instance_uid, stored.duplicate)
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
