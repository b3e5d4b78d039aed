"""The audit trail's hash chain: each event's hash covers its content and the hash of the event
before it, so an edited, deleted or re-ordered row breaks the chain where it happened.

Pure: callers hand in the stored values; nothing here touches a database.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64  # the "previous hash" of the first event

# The columns the hash covers, in this order. Changing the list or the encoding invalidates
# every stored hash: add a new chain version instead.
HASHED_FIELDS = (
    "chain_seq", "occurred_at", "action", "actor", "calling_ae", "peer_address",
    "study_instance_uid", "series_instance_uid", "sop_instance_uid", "job_id", "model_version",
    "details",
)


def _canonical_time(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_bytes(fields: Mapping[str, Any]) -> bytes:
    """The bytes the hash covers: the :data:`HASHED_FIELDS` as sorted, compact JSON."""
    payload = {name: fields[name] for name in HASHED_FIELDS}
    payload["occurred_at"] = _canonical_time(payload["occurred_at"])
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def event_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """sha256 (hex) of the previous event's hash followed by this event's canonical bytes."""
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + canonical_bytes(fields)).hexdigest()


@dataclass(frozen=True)
class ChainedEvent:
    """One stored event as the verifier sees it: its id, its hashed fields and its links."""

    id: int
    fields: Mapping[str, Any]
    prev_hash: str | None
    hash: str | None

    @property
    def seq(self) -> int | None:
        value = self.fields.get("chain_seq")
        return None if value is None else int(value)


@dataclass(frozen=True)
class ChainBreak:
    """Where the chain fails and why; ``event_id`` is the row to look at (None past the end)."""

    event_id: int | None
    seq: int | None
    problem: str

    def __str__(self) -> str:
        where = f"event {self.event_id}" if self.event_id is not None else "end of trail"
        return f"{where} (seq {self.seq}): {self.problem}"


def verify_chain(
    events: Iterable[ChainedEvent], head_length: int, head_hash: str
) -> tuple[int, list[ChainBreak]]:
    """Check ``events`` (in ``chain_seq`` order) against each other and against the chain head
    (its length and last hash). Returns how many events were checked and every break found."""
    breaks: list[ChainBreak] = []
    expected_seq, expected_prev = 1, GENESIS_HASH
    checked = 0
    for event in events:
        checked += 1
        seq = event.seq
        if seq is None or event.hash is None or event.prev_hash is None:
            breaks.append(ChainBreak(event.id, seq, "not chained (written around the trail)"))
            continue
        if seq > expected_seq:
            breaks.append(ChainBreak(event.id, seq, f"events with seq {expected_seq}..{seq - 1} "
                                                    "are missing (deleted)"))
        elif seq < expected_seq:
            breaks.append(ChainBreak(event.id, seq, "sequence number repeated or out of order"))
        if event.prev_hash != expected_prev and seq == expected_seq:
            breaks.append(ChainBreak(event.id, seq, "does not link to the event before it"))
        if event_hash(event.prev_hash, event.fields) != event.hash:
            breaks.append(ChainBreak(event.id, seq, "content does not match its hash (edited)"))
        expected_seq, expected_prev = seq + 1, event.hash
    if expected_seq - 1 < head_length:
        breaks.append(ChainBreak(None, head_length, f"the last {head_length - expected_seq + 1} "
                                                    "event(s) are missing (deleted)"))
    elif expected_seq - 1 == head_length and expected_prev != head_hash:
        breaks.append(ChainBreak(None, head_length, "last event does not match the chain head"))
    elif expected_seq - 1 > head_length:
        breaks.append(ChainBreak(None, head_length, "events beyond the chain head"))
    return checked, breaks
