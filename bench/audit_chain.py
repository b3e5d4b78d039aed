"""The audit hash chain's cost: transactions per second that each append one event (the
chain head is locked at commit, so appends serialise), with 1 and 4 threads, on SQLite and
PostgreSQL, against the same rows inserted unchained in the same run; and how fast
`lacuna audit verify` checks a trail.

    .venv/bin/python bench/audit_chain.py [--transactions 2000] [--trail 100000]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import text

from node.db.engine import build_engine, session_factory, upgrade
from node.services import audit


def appends_per_second(url: str, transactions: int, threads: int, chained: bool) -> float:
    engine = build_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)

    def work(count: int) -> None:
        for index in range(count):
            with sessions.begin() as session:
                event = audit.record(session, "bench.event", study_instance_uid="1.2.3",
                                     job_id=index, index=index)
                if not chained:  # the baseline: the same row, inserted directly
                    session.info.pop("lacuna.audit.pending")
                    session.add(event)

    workers = [threading.Thread(target=work, args=(transactions // threads,))
               for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    engine.dispose()
    return transactions / elapsed


def verify_rate(url: str, events: int) -> tuple[float, int]:
    engine = build_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    for start in range(0, events, 1000):
        with sessions.begin() as session:
            for index in range(start, min(start + 1000, events)):
                audit.record(session, "bench.event", job_id=index, index=index)
    started = time.perf_counter()
    with sessions.begin() as session:
        checked, breaks = audit.verify(session)
    elapsed = time.perf_counter() - started
    engine.dispose()
    assert not breaks, breaks
    return checked / elapsed, checked


def postgres_schema(base: str) -> tuple[str, str]:
    schema = f"lacuna_bench_{uuid.uuid4().hex[:8]}"
    with build_engine(base).begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options=-csearch_path%3D{schema}", schema


def drop_schema(base: str, schema: str) -> None:
    with build_engine(base).begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--trail", type=int, default=100_000)
    parser.add_argument("--postgres", default=os.environ.get(
        "LACUNA_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    print(f"{'database':<11}{'threads':>8}{'chained/s':>11}{'unchained/s':>13}{'ratio':>7}")
    with tempfile.TemporaryDirectory() as folder:
        for database in ("sqlite", "postgresql"):
            for threads in (1, 4):
                rates = []
                for chained in (True, False):
                    if database == "sqlite":
                        url, schema = f"sqlite:///{Path(folder) / f'{threads}{chained}.db'}", ""
                    else:
                        url, schema = postgres_schema(args.postgres)
                    try:
                        rates.append(appends_per_second(url, args.transactions, threads, chained))
                    finally:
                        if schema:
                            drop_schema(args.postgres, schema)
                print(f"{database:<11}{threads:>8}{rates[0]:>11.0f}{rates[1]:>13.0f}"
                      f"{rates[0] / rates[1]:>7.2f}")
        rate, checked = verify_rate(f"sqlite:///{Path(folder) / 'v.db'}", args.trail)
        print(f"verify (sqlite): {checked} events at {rate:,.0f} events/s")
        url, schema = postgres_schema(args.postgres)
        try:
            rate, checked = verify_rate(url, args.trail)
        finally:
            drop_schema(args.postgres, schema)
        print(f"verify (postgresql): {checked} events at {rate:,.0f} events/s")


if __name__ == "__main__":
    main()
