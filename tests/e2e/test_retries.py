"""A destination that is down, then back: the job is done once its results are built; the
delivery queue retries until they arrive, once each; inference runs once."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select

from harness.peers import free_port, local_settings, start_storescp
from node.app import EmbeddedNode
from node.config import DatabaseSettings
from node.db.tables import AuditEvent, Delivery, Job
from node.domain.delivery import DeliveryState
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

        # The worker tries each delivery once before it marks the job done, so the failed
        # delivery's audit row comes first and the job's state follows in its own commit.
        wait_for(lambda: "delivery.failed" in actions() and "job.finished" in actions(), timeout_s=240)
        with node.database.sessions.begin() as session:
            job = session.scalar(select(Job))
            assert job is not None and job.state == JobState.DONE  # not re-run for a delivery
            pending = session.scalar(select(func.count()).select_from(Delivery).where(
                Delivery.state == DeliveryState.PENDING))
            assert pending == 2
        pacs_process = start_storescp(tmp_path / "pacs", pacs_port)
        pacs = Pacs(tmp_path / "pacs", pacs_port)

        def delivered() -> bool:
            with node.database.sessions.begin() as session:
                states = set(session.scalars(select(Delivery.state)))
            return states == {DeliveryState.DELIVERED}

        wait_for(delivered, timeout_s=120)
        received = wait_for(lambda: (r := pacs.received()) and sum(map(len, r.values())) == 2 and r)
    finally:
        node.stop()
        if pacs_process is not None:
            pacs_process.terminate()
            pacs_process.wait()
    assert {kind: len(paths) for kind, paths in received.items()} == {"SEG": 1, "SR": 1}
    trail = actions()
    assert trail.count("result.built") == 2  # SEG and SR built once: inference ran once
    assert trail.count("job.started") == 1 and trail.count("job.finished") == 1
    assert trail.count("delivery.failed") >= 2 and trail.count("delivery.succeeded") == 2
