"""Orthanc (the Debian package) as a real sending PACS: it holds a study and sends it to
Lacuna through its REST API; every instance arrives and the study is processed once."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from node.app import EmbeddedNode
from node.db.tables import AuditEvent, Instance, Job
from node.domain.jobs import JobState
from tests.conftest import wait_for
from tests.e2e.conftest import ENGINES, Orthanc, Pacs

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("engine", ENGINES)
def test_orthanc_sends_a_study_and_every_instance_arrives(
    node: EmbeddedNode, orthanc: Orthanc, pacs: Pacs, synthetic_study, engine: str  # type: ignore[no-untyped-def]
) -> None:
    [study_id] = orthanc.upload(synthetic_study.folder)
    orthanc.add_modality("lacuna", "LACUNA", node.port)
    answer = orthanc.rest("POST", "/modalities/lacuna/store",
                          {"Resources": [study_id], "Synchronous": True})
    files = {p.stem for p in synthetic_study.folder.rglob("*.dcm")}
    assert isinstance(answer, dict)
    assert (answer["InstancesCount"], answer["FailedInstancesCount"]) == (len(files), 0)

    with node.database.sessions.begin() as session:
        stored = set(session.scalars(select(Instance.sop_instance_uid)))
        senders = set(session.scalars(select(AuditEvent.calling_ae).where(
            AuditEvent.action == "instance.received")))
    assert stored == files
    assert senders == {orthanc.ae_title}

    def done() -> list[Job] | None:
        with node.database.sessions.begin() as session:
            jobs = list(session.scalars(select(Job)))
        return jobs if jobs and all(j.state == JobState.DONE for j in jobs) else None

    assert len(wait_for(done, timeout_s=240)) == 1
    assert {"SEG", "SR"} <= set(pacs.received())
