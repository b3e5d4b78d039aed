from datetime import UTC, datetime

from node.domain.audit_chain import GENESIS_HASH, ChainedEvent, event_hash, verify_chain


def chain(count: int) -> list[ChainedEvent]:
    events, prev = [], GENESIS_HASH
    for seq in range(1, count + 1):
        fields = {"chain_seq": seq, "occurred_at": datetime(2026, 1, 1, 0, 0, seq, 7, tzinfo=UTC),
                  "action": "a", "actor": "lacuna", "calling_ae": None, "peer_address": None,
                  "study_instance_uid": None, "series_instance_uid": None,
                  "sop_instance_uid": None, "job_id": seq, "model_version": None,
                  "details": {"n": seq, "text": "é"}}
        digest = event_hash(prev, fields)
        events.append(ChainedEvent(100 + seq, fields, prev, digest))
        prev = digest
    return events


def test_intact_chain_and_head() -> None:
    events = chain(5)
    assert verify_chain(events, 5, str(events[-1].hash)) == (5, [])
    assert verify_chain([], 0, GENESIS_HASH) == (0, [])


def test_reordered_events_break_the_chain() -> None:
    events = chain(4)
    events[1], events[2] = events[2], events[1]
    _, breaks = verify_chain(events, 4, str(events[-1].hash))
    assert [b.event_id for b in breaks] == [103, 102, 104]


def test_a_forged_head_is_reported() -> None:
    events = chain(3)
    _, breaks = verify_chain(events, 3, "0" * 63 + "1")
    assert [str(b) for b in breaks] == ["end of trail (seq 3): last event does not match the chain head"]
