"""The installation's identity (:class:`node.results.identity.NodeIdentity`): made once, on
the node's first start, kept in the database so that every process of the node shares it."""

from __future__ import annotations

import secrets

from pydicom.uid import generate_uid
from sqlalchemy.orm import Session

from node.db.tables import NodeIdentityRow, utcnow
from node.results.identity import NodeIdentity
from node.services import audit

_ROW_ID = 1


def node_identity(session: Session) -> NodeIdentity:
    """This node's identity, made (and audited) on first use. Two processes making it at once
    collide on the fixed primary key, and the loser's transaction fails (it is retried)."""
    row = session.get(NodeIdentityRow, _ROW_ID)
    if row is None:
        row = NodeIdentityRow(id=_ROW_ID, device_uid=str(generate_uid()),
                              serial_number=f"LACUNA-{secrets.token_hex(6).upper()}",
                              created_at=utcnow())
        session.add(row)
        audit.record(session, "node.identity_created", device_uid=row.device_uid,
                     serial_number=row.serial_number)
    return NodeIdentity(row.device_uid, row.serial_number)
