"""Twenty dcmtk storescu associations at once, four studies each split five ways and
interleaved: every instance is stored once, none is lost or duplicated, and every study is
processed exactly once, after it is whole."""

from __future__ import annotations

import subprocess
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select

from node.app import EmbeddedNode
from node.db.tables import AuditEvent, Instance, Job, Study
from node.domain.jobs import JobState
from tests.conftest import require_tool, wait_for
from tests.e2e.conftest import ENGINES, Pacs, node_settings

pytestmark = pytest.mark.e2e

STUDIES, SPLIT = 4, 5


@pytest.mark.parametrize("engine", ENGINES)
def test_twenty_parallel_associations_lose_and_duplicate_nothing(
    tmp_path: Path, pacs: Pacs, engine: str
) -> None:
    from training.synth import write_study

    studies = [write_study(tmp_path / f"study{n}", seed=500 + n) for n in range(STUDIES)]
    settings = node_settings(tmp_path, pacs, engine=engine)
    settings = replace(settings, scp=replace(settings.scp, max_associations=2 * STUDIES * SPLIT),
                       study=replace(settings.study, stable_seconds=3.0))
    node = EmbeddedNode(settings)
    node.start()
    try:
        senders = []
        expected: set[str] = set()
        for study in studies:
            files = sorted(study.folder.rglob("*.dcm"))
            expected.update(p.stem for p in files)
            for part in range(SPLIT):
                chunk = [str(p) for p in files[part::SPLIT]]
                senders.append(subprocess.Popen(
                    [require_tool("storescu"), "-aet", f"SCANNER{part}", "-aec", "LACUNA",
                     "127.0.0.1", str(node.port), *chunk],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        assert len(senders) == 20
        for sender in senders:
            _, errors = sender.communicate(timeout=300)
            assert sender.returncode == 0, errors

        def processed() -> list[Job] | None:
            with node.database.sessions.begin() as session:
                jobs = list(session.scalars(select(Job)))
            return jobs if len(jobs) == STUDIES and all(
                j.state == JobState.DONE for j in jobs) else None

        jobs = wait_for(processed, timeout_s=300, interval_s=0.5)
        with node.database.sessions.begin() as session:
            stored = list(session.scalars(select(Instance.sop_instance_uid)))
            received = session.scalar(select(func.count()).select_from(AuditEvent).where(
                AuditEvent.action == "instance.received"))
            study_count = session.scalar(select(func.count()).select_from(Study))
            accepted = session.scalar(select(func.count()).select_from(AuditEvent).where(
                AuditEvent.action == "association.accepted"))
    finally:
        node.stop()
    assert set(stored) == expected and len(stored) == len(expected)  # nothing lost or doubled
    assert received == len(expected)
    assert study_count == STUDIES and accepted == 20
    assert Counter(job.study_id for job in jobs) == Counter({job.study_id: 1 for job in jobs})
    assert all(job.run == 1 for job in jobs)  # each study whole before it ran: no re-run
