"""The audit trail: one row per received instance, association, state change and admin action,
written in the same transaction as the change it records.

Rows are chained (node.domain.audit_chain) when their transaction commits: the chain head is
locked last, just before the commit, so appends serialise in commit order without holding the
lock while the rest of the transaction runs (and without lock-order deadlocks).
"""

from __future__ import annotations

import getpass
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, event, select
from sqlalchemy.orm import Session

from node.db.tables import AuditChainHead, AuditEvent, Base, utcnow
from node.domain.audit_chain import (
    GENESIS_HASH,
    HASHED_FIELDS,
    ChainBreak,
    ChainedEvent,
    event_hash,
    verify_chain,
)

NODE_ACTOR = "lacuna"
_PENDING = "lacuna.audit.pending"  # session.info key: events recorded, not yet chained
_HOOKED = "lacuna.audit.hooked"  # session.info key: the chain listens to this session


def admin_actor() -> str:
    """The operating-system user running an admin command."""
    try:
        return f"admin:{getpass.getuser()}"
    except (KeyError, OSError):
        return "admin:unknown"


def record(
    into: Session | list[AuditEvent],
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
    """Record an audit row ``into`` a session: it is chained and inserted when the session
    commits, and discarded if it rolls back; or into a list, for a caller on a bare Connection,
    which passes the list to :func:`append` before it commits. The returned object is not
    attached to a session (its ``id`` stays unset); query the table for the stored row.
    ``details`` must be JSON-serialisable and free of patient names, IDs and birth dates."""
    audit_event = AuditEvent(
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
    if isinstance(into, list):
        into.append(audit_event)
        return audit_event
    pending = into.info.get(_PENDING)
    if pending is None:
        # The chain hooks only the sessions that record audit rows, not every SQLAlchemy
        # session of the process; once per session (SessionEvents take an instance).
        if not into.info.get(_HOOKED):
            event.listen(into, "before_commit", _chain_pending)
            event.listen(into, "after_soft_rollback", _discard_pending)
            into.info[_HOOKED] = True
        pending = into.info[_PENDING] = []
    pending.append(audit_event)
    return audit_event


def hashed_fields(audit_event: AuditEvent) -> dict[str, Any]:
    return {name: getattr(audit_event, name) for name in HASHED_FIELDS}


# Core statements, built once: the chain step runs in every committing transaction, and the
# ORM's bulk-update machinery cost more than the statements themselves.
_EVENTS = Base.metadata.tables["audit_events"]
_HEAD = Base.metadata.tables["audit_chain_head"]
_ADVANCE_HEAD = (
    _HEAD.update().where(_HEAD.c.id == 1)
    .values(length=_HEAD.c.length + bindparam("appended"))
    .returning(_HEAD.c.length, _HEAD.c.head_hash)
)
_INSERT_EVENTS = _EVENTS.insert()
_SET_HEAD_HASH = _HEAD.update().where(_HEAD.c.id == 1).values(head_hash=bindparam("last_hash"))


def _chain_pending(session: Session) -> None:
    pending: list[AuditEvent] = session.info.pop(_PENDING, [])
    if not pending:
        return
    session.flush()  # everything else first: the head lock is the last one taken
    append(session.connection(), pending)


# The head this process last wrote, a guess at the current one: an append claims the head
# with one conditional UPDATE (it matches only if the guess is right, so the database decides,
# whatever other processes or a rolled-back transaction did), and falls back to reading the
# head under its lock when it does not match.
_CLAIM_HEAD = (
    _HEAD.update()
    .where(_HEAD.c.id == 1, _HEAD.c.length == bindparam("expected_length"),
           _HEAD.c.head_hash == bindparam("expected_hash"))
    .values(length=bindparam("new_length"), head_hash=bindparam("new_hash"))
)


class _LastHead:
    """(length, head hash) as this process last wrote them; None before the first append."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: tuple[int, str] | None = None

    def get(self) -> tuple[int, str] | None:
        with self._lock:
            return self._value

    def set(self, value: tuple[int, str]) -> None:
        with self._lock:
            self._value = value


_last_head = _LastHead()


def _chain(pending: Sequence[AuditEvent], length: int, head_hash: str) -> tuple[
        list[dict[str, Any]], tuple[int, str]]:
    """Link ``pending`` onto a head of ``length`` events ending in ``head_hash``: the rows to
    insert and the new head."""
    seq, prev_hash = length, head_hash
    rows = []
    for audit_event in pending:
        seq += 1
        audit_event.chain_seq = seq
        audit_event.prev_hash = prev_hash
        audit_event.hash = prev_hash = event_hash(prev_hash, hashed_fields(audit_event))
        rows.append({column.key: getattr(audit_event, column.key)
                     for column in _EVENTS.columns if column.key != "id"})
    return rows, (seq, prev_hash)


def append(connection: Connection, pending: Sequence[AuditEvent]) -> None:
    """Chain ``pending`` onto the trail and insert them, in ``connection``'s transaction. Call
    it last before the commit, after every other statement of the transaction: it takes the
    chain head's lock, which is held until the commit."""
    if not pending:
        return
    guess = _last_head.get()
    if guess is not None:  # two statements, not three, when no one else appended meanwhile
        rows, head = _chain(pending, *guess)
        claimed = connection.execute(_CLAIM_HEAD, {
            "expected_length": guess[0], "expected_hash": guess[1],
            "new_length": head[0], "new_hash": head[1]})
        if claimed.rowcount == 1:
            connection.execute(_INSERT_EVENTS, rows)
            _last_head.set(head)
            return
    found = connection.execute(_ADVANCE_HEAD, {"appended": len(pending)}).one_or_none()
    if found is None:
        raise RuntimeError("audit chain head is missing: run the migrations")
    rows, head = _chain(pending, found.length - len(pending), found.head_hash)
    connection.execute(_INSERT_EVENTS, rows)
    connection.execute(_SET_HEAD_HASH, {"last_hash": head[1]})
    _last_head.set(head)


def _discard_pending(session: Session, _previous_transaction: Any) -> None:
    session.info.pop(_PENDING, None)


def chained_events(session: Session, batch: int = 5000) -> Iterator[ChainedEvent]:
    """Every audit row in chain order (unchained rows last), read in batches."""
    last_seq = 0
    while True:
        rows = list(session.scalars(
            select(AuditEvent).where(AuditEvent.chain_seq > last_seq)
            .order_by(AuditEvent.chain_seq).limit(batch)
        ))
        for row in rows:
            yield ChainedEvent(row.id, hashed_fields(row), row.prev_hash, row.hash)
        if len(rows) < batch:
            break
        last_seq = int(rows[-1].chain_seq or 0)
    for row in session.scalars(select(AuditEvent).where(AuditEvent.chain_seq.is_(None))
                               .order_by(AuditEvent.id)):
        yield ChainedEvent(row.id, hashed_fields(row), row.prev_hash, row.hash)


def verify(session: Session) -> tuple[int, list[ChainBreak]]:
    """Check the whole trail against its hash chain and head: (events checked, breaks)."""
    head = session.get(AuditChainHead, 1)
    length, head_hash = (head.length, head.head_hash) if head else (0, GENESIS_HASH)
    return verify_chain(chained_events(session), length, head_hash)


@dataclass(frozen=True)
class EventFilter:
    """Which audit events to list; None: any."""

    study_instance_uid: str | None = None
    calling_ae: str | None = None
    action: str | None = None
    job_id: int | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    limit: int | None = None  # the newest this many


def find_events(session: Session, selection: EventFilter) -> list[AuditEvent]:
    """The selected events, oldest first."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc())
    if selection.limit is not None:
        query = query.limit(selection.limit)
    for column, value in ((AuditEvent.study_instance_uid, selection.study_instance_uid),
                          (AuditEvent.calling_ae, selection.calling_ae),
                          (AuditEvent.action, selection.action),
                          (AuditEvent.job_id, selection.job_id)):
        if value is not None:
            query = query.where(column == value)
    if selection.since is not None:
        query = query.where(AuditEvent.occurred_at >= selection.since)
    if selection.until is not None:
        query = query.where(AuditEvent.occurred_at < selection.until)
    return list(reversed(list(session.scalars(query))))
