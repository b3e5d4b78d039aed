"""Intake marks a study urgent from the calling AE or the requested priority; its job is
queued with the urgent priority."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import Engine, select

from models.package import default_package_dir
from node.db.engine import session_factory, upgrade
from node.db.tables import AuditEvent, Job, Study
from node.dicom.ports import ReceivedInstance
from node.domain.completeness import CompletenessRules
from node.domain.priority import URGENT, UrgencyRule
from node.services import registry
from node.services.intake import Intake
from node.services.scheduler import Scheduler
from training.synth import write_study


@pytest.fixture(scope="module")
def t2_slices(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    study = write_study(tmp_path_factory.mktemp("urgent"), seed=12, include_t1=False,
                        lesion_count=1)
    return sorted(next(iter(study.series.values())))[:2]


def received(dataset: Dataset, calling_ae: str) -> ReceivedInstance:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return ReceivedInstance(buffer.getvalue(), calling_ae, "127.0.0.1",
                            str(dataset.SOPClassUID), str(dataset.SOPInstanceUID))


def test_requested_priority_or_calling_ae_make_a_study_urgent(
    engine: Engine, tmp_path: Path, t2_slices: list[Path]
) -> None:
    upgrade(engine)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        registry.ensure_default(session, default_package_dir())
    intake = Intake(tmp_path / "storage", sessions,
                    urgency=UrgencyRule(calling_aes=frozenset({"ER_MR"})))

    routine = pydicom.dcmread(t2_slices[0])
    intake.store(received(routine, "WARD_MR"))
    stat = pydicom.dcmread(t2_slices[1])
    request = Dataset()
    request.RequestedProcedurePriority = "STAT"
    stat.RequestAttributesSequence = [request]
    intake.store(received(stat, "WARD_MR"))
    with sessions.begin() as session:
        study = session.scalars(select(Study)).one()
        assert study.urgent
        reasons = list(session.scalars(select(AuditEvent.action).where(
            AuditEvent.action == "study.urgent")))
        assert reasons == ["study.urgent"]  # once, not per instance

    [job_id] = Scheduler(sessions, CompletenessRules(0.0, missing_wait_seconds=0)).run_once()
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.priority == URGENT


def test_calling_ae_rule_and_routine_default(engine: Engine, tmp_path: Path, t2_slices: list[Path]) -> None:
    upgrade(engine)
    sessions = session_factory(engine)
    intake = Intake(tmp_path / "storage", sessions,
                    urgency=UrgencyRule(calling_aes=frozenset({"ER_MR"})))
    first = pydicom.dcmread(t2_slices[0])
    intake.store(received(first, "WARD_MR"))
    with sessions.begin() as session:
        assert not session.scalars(select(Study)).one().urgent
    second = pydicom.dcmread(t2_slices[1])
    intake.store(received(second, "ER_MR"))
    with sessions.begin() as session:
        assert session.scalars(select(Study)).one().urgent
