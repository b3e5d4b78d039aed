"""The audit trail's hash chain on both databases: concurrent appends chain in commit order,
and an edited, deleted or truncated trail fails verification naming the rows."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DatabaseError

from node.db.engine import session_factory, upgrade
from node.db.tables import AuditEvent
from node.services import audit


def append(engine: Engine, count: int, prefix: str) -> None:
    sessions = session_factory(engine)
    for index in range(count):
        with sessions.begin() as session:
            audit.record(session, "test.event", study_instance_uid=f"1.2.3.{index}",
                         job_id=index, worker=prefix, index=index)
            if index % 3 == 0:  # several events in one transaction chain in order too
                audit.record(session, "test.second", job_id=index, worker=prefix)


def ids_by_seq(engine: Engine) -> list[int]:
    with session_factory(engine).begin() as session:
        return list(session.scalars(select(AuditEvent.id).order_by(AuditEvent.chain_seq)))


@pytest.fixture
def trail(engine: Engine) -> Engine:
    upgrade(engine)
    threads = [threading.Thread(target=append, args=(engine, 15, f"w{n}")) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return engine


def tamper(engine: Engine, statement: str, **parameters: object) -> None:
    """Run ``statement`` as someone who owns the schema would: around the append-only trigger."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
        else:
            connection.execute(text("DROP TRIGGER IF EXISTS audit_events_no_update"))
            connection.execute(text("DROP TRIGGER IF EXISTS audit_events_no_delete"))
        connection.execute(text(statement), parameters)
        if engine.dialect.name == "postgresql":
            connection.execute(text("ALTER TABLE audit_events ENABLE TRIGGER USER"))


def verify(engine: Engine) -> tuple[int, list[str]]:
    with session_factory(engine).begin() as session:
        checked, breaks = audit.verify(session)
    return checked, [str(b) for b in breaks]


def test_concurrent_appends_form_one_intact_chain(trail: Engine) -> None:
    checked, breaks = verify(trail)
    assert (checked, breaks) == (4 * (15 + 5), [])
    with session_factory(trail).begin() as session:
        seqs = list(session.scalars(select(AuditEvent.chain_seq).order_by(AuditEvent.chain_seq)))
    assert seqs == list(range(1, 81))


def test_a_rolled_back_transaction_leaves_no_event(trail: Engine) -> None:
    sessions = session_factory(trail)
    with pytest.raises(RuntimeError), sessions.begin() as session:
        audit.record(session, "test.rolled_back")
        raise RuntimeError("the change failed")
    with sessions.begin() as session:
        assert session.scalar(select(AuditEvent.id).where(
            AuditEvent.action == "test.rolled_back")) is None
    assert verify(trail)[1] == []


def test_an_append_rolled_back_after_it_claimed_the_head_leaves_the_chain_whole(
        trail: Engine) -> None:
    """An append claims the head from what this process last wrote; a rollback after the
    claim leaves that guess wrong, and the next append must find the real head."""
    with pytest.raises(RuntimeError), trail.begin() as connection:
        events: list[AuditEvent] = []
        audit.record(events, "test.rolled_back")
        audit.append(connection, events)
        raise RuntimeError("the change failed after the append")
    append(trail, 2, "after")
    checked, breaks = verify(trail)
    assert (checked, breaks) == (4 * (15 + 5) + 3, [])
    with session_factory(trail).begin() as session:
        seqs = list(session.scalars(select(AuditEvent.chain_seq).order_by(AuditEvent.chain_seq)))
    assert seqs == list(range(1, 84))


@pytest.mark.parametrize("statement", ["UPDATE audit_events SET actor = 'x'",
                                       "DELETE FROM audit_events"])
def test_the_database_refuses_to_change_audit_rows(trail: Engine, statement: str) -> None:
    with pytest.raises(DatabaseError, match="append-only"), trail.begin() as connection:
        connection.execute(text(statement))
    assert verify(trail) == (80, [])


def test_an_edited_row_is_named(trail: Engine) -> None:
    victim = ids_by_seq(trail)[30]
    tamper(trail, "UPDATE audit_events SET actor = 'someone else' WHERE id = :id", id=victim)
    assert verify(trail)[1] == [f"event {victim} (seq 31): content does not match its hash (edited)"]


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(trail: Engine) -> None:
    ids = ids_by_seq(trail)
    tamper(trail, "UPDATE audit_events SET hash = :h WHERE id = :id", h="f" * 64, id=ids[9])
    _, breaks = verify(trail)
    assert breaks == [f"event {ids[9]} (seq 10): content does not match its hash (edited)",
                      f"event {ids[10]} (seq 11): does not link to the event before it"]


def test_deleted_rows_are_named(trail: Engine) -> None:
    ids = ids_by_seq(trail)
    tamper(trail, "DELETE FROM audit_events WHERE id IN (:a, :b)", a=ids[40], b=ids[41])
    tamper(trail, "DELETE FROM audit_events WHERE id = :id", id=ids[-1])
    checked, breaks = verify(trail)
    assert checked == 77
    assert breaks == [f"event {ids[42]} (seq 43): events with seq 41..42 are missing (deleted)",
                      "end of trail (seq 80): the last 1 event(s) are missing (deleted)"]


def test_cli_verify_fails_and_names_the_row(trail: Engine, database_url: str,
                                            tmp_path: object, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from node.cli import EXIT_FAILURE, EXIT_OK, main

    monkeypatch.setenv("LACUNA_DATABASE_URL", database_url)
    assert main(["audit", "verify"]) == EXIT_OK
    assert "80 event(s) checked: chain intact" in capsys.readouterr().out
    victim = ids_by_seq(trail)[5]
    tamper(trail, "UPDATE audit_events SET details = '{}' WHERE id = :id", id=victim)
    assert main(["audit", "verify"]) == EXIT_FAILURE
    assert f"BROKEN event {victim} (seq 6): content does not match its hash (edited)" in (
        capsys.readouterr().out)
    assert main(["audit", "export", "--action", "test.second"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 20 and all('"action": "test.second"' in line for line in lines)
