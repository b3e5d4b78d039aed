"""A destination that is down, then back: results arrive once, inference runs once."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from node.app import EmbeddedNode
from node.config import DatabaseSettings
from node.db.tables import AuditEvent, Job
from node.demo import free_port, local_settings, start_storescp
from node.domain.jobs import JobState
from tests.conftest import wait_for
from tests.e2e.conftest import Pacs, storescu

pytestmark = pytest.mark.e2e


def test_destination_down_then_back(tmp_path: Path, synthetic_study, database_url: str) -> None:  # type: ignore[no-untyped-def]
    pacs_port = free_port()  # nothing listens there yet
    settings = local_settings(tmp_path, pacs_port, stable_seconds=1.0, poll_seconds=0.2)
    settings = replace(settings, database=DatabaseSettings(url=database_url),
                       worker=replace(settings.worker, retry_base_seconds=1.0,
                                      retry_max_seconds=2.0))
    node = EmbeddedNode(settings)
    node.start()
    pacs_process = None
    try:
        assert storescu(node.port, synthetic_study.folder).returncode == 0

        def actions() -> list[str]:
            with node.database.sessions.begin() as session:
                return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))

        wait_for(lambda: "job.retry_scheduled" in actions(), timeout_s=240)
        pacs_process = start_storescp(tmp_path / "pacs", pacs_port)
        pacs = Pacs(tmp_path / "pacs", pacs_port)

        def done() -> Job | None:
            with node.database.sessions.begin() as session:
                job = session.scalar(select(Job))
                return job if job is not None and job.state == JobState.DONE else None

        job = wait_for(done, timeout_s=120)
        received = pacs.received()
    finally:
        node.stop()
        if pacs_process is not None:
            pacs_process.terminate()
            pacs_process.wait()
    assert {kind: len(paths) for kind, paths in received.items()} == {"SEG": 1, "SR": 1}
    assert job.attempts >= 2
    trail = actions()
    assert trail.count("result.built") == 2  # SEG and SR built once: inference ran once
    assert trail.count("delivery.failed") >= 2 and trail.count("delivery.succeeded") == 2
    assert trail.count("job.started") == job.attempts
