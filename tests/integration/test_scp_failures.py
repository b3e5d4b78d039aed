"""The SCP never answers success for an instance it could not persist."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage
from sqlalchemy import Engine, select, text

from node.config import ScpSettings
from node.db.engine import session_factory, upgrade
from node.db.tables import AuditEvent
from node.dicom.scp import ScpContext, start_scp
from node.dicom.status import Status
from node.services.intake import Intake
from training.synth import write_study


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> pydicom.Dataset:
    study = write_study(tmp_path_factory.mktemp("one"), seed=11, include_t1=False, lesion_count=1)
    return pydicom.dcmread(next(iter(study.series.values()))[0])


def send(port: int, dataset: pydicom.Dataset) -> int:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="LACUNA")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(dataset).Status)
    finally:
        assoc.release()


@pytest.fixture
def scp(engine: Engine, tmp_path: Path) -> Iterator[tuple[int, Intake, Path]]:
    upgrade(engine)
    sessions = session_factory(engine)
    root = tmp_path / "storage"
    intake = Intake(root, sessions)
    server = start_scp(ScpSettings(host="127.0.0.1", port=0), ScpContext(intake, sessions))
    yield int(server.server_address[1]), intake, root
    server.shutdown()


def refusals(engine: Engine) -> list[str]:
    with session_factory(engine).begin() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "instance.refused"))
        return [event.details["status"] for event in events]


def test_unwritable_storage_answers_out_of_resources(
    scp: tuple[int, Intake, Path], engine: Engine, instance: pydicom.Dataset
) -> None:
    port, _, root = scp
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_bytes(b"a file where the storage folder should be")
    assert send(port, instance) == Status.OUT_OF_RESOURCES
    assert refusals(engine) == ["0xA700"]


def test_index_failure_answers_out_of_resources_then_recovers(
    scp: tuple[int, Intake, Path], engine: Engine, instance: pydicom.Dataset
) -> None:
    port, _, _ = scp
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE instances RENAME TO instances_away"))
    assert send(port, instance) == Status.OUT_OF_RESOURCES
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE instances_away RENAME TO instances"))
    assert send(port, instance) == Status.SUCCESS  # the sender's retry is stored
    assert refusals(engine) == ["0xA700"]
