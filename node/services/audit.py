"""The audit trail: one row per received instance, association, state change and admin action,
written in the same transaction as the change it records."""

from __future__ import annotations

import getpass
from typing import Any

from sqlalchemy.orm import Session

from node.db.tables import AuditEvent, utcnow

NODE_ACTOR = "lacuna"


def admin_actor() -> str:
    """The operating-system user running an admin command."""
    try:
        return f"admin:{getpass.getuser()}"
    except (KeyError, OSError):
        return "admin:unknown"


def record(
    session: Session,
    action: str,
    *,
    actor: str = NODE_ACTOR,
    calling_ae: str | None = None,
    peer_address: str | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    job_id: int | None = None,
    model_version: str | None = None,
    **details: Any,
) -> AuditEvent:
    """Add an audit row to ``session``; it commits or rolls back with the change it records.
    ``details`` must be JSON-serialisable and free of patient names, IDs and birth dates."""
    event = AuditEvent(
        occurred_at=utcnow(),
        action=action,
        actor=actor,
        calling_ae=calling_ae,
        peer_address=peer_address,
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        job_id=job_id,
        model_version=model_version,
        details=details,
    )
    session.add(event)
    return event
