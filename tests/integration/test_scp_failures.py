"""The SCP never answers success for an instance it could not persist."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage
from sqlalchemy import Engine, inspect, select, text

from node.config import ScpSettings
from node.db.engine import session_factory, upgrade
from node.db.tables import AuditEvent
from node.dicom.aioscp import start_asyncio_scp
from node.dicom.scp import start_scp
from node.dicom.status import Status
from node.services.intake import Intake
from node.services.reception import NodeReception
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


# Both receivers ([scp] engine) store through the same port.
RECEIVERS = {"pynetdicom": start_scp, "asyncio": start_asyncio_scp}


@pytest.fixture(params=list(RECEIVERS))
def scp(engine: Engine, tmp_path: Path,
        request: pytest.FixtureRequest) -> Iterator[tuple[int, Intake, Path]]:
    upgrade(engine)
    sessions = session_factory(engine)
    root = tmp_path / "storage"
    intake = Intake(root, sessions)
    server = RECEIVERS[request.param](ScpSettings(host="127.0.0.1", port=0),
                                      NodeReception(intake, sessions))
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


def large_instance(instance: pydicom.Dataset, frames: int) -> pydicom.Dataset:
    """``instance`` made into a ``frames``-frame dataset (as big as an Enhanced MR series)."""
    large = copy.deepcopy(instance)
    large.SOPInstanceUID = pydicom.uid.generate_uid()
    large.NumberOfFrames = frames
    large.PixelData = bytes(instance.PixelData) * frames
    return large


@pytest.mark.parametrize("receiver", list(RECEIVERS))
def test_a_dataset_over_the_limit_is_refused_and_nothing_is_kept(
    engine: Engine, tmp_path: Path, instance: pydicom.Dataset, receiver: str
) -> None:
    upgrade(engine)
    sessions = session_factory(engine)
    root = tmp_path / "storage"
    intake = Intake(root, sessions, max_dataset_bytes=2**20)
    server = RECEIVERS[receiver](ScpSettings(host="127.0.0.1", port=0),
                                 NodeReception(intake, sessions))
    try:
        port = int(server.server_address[1])
        assert send(port, large_instance(instance, 12)) == Status.OUT_OF_RESOURCES  # 1.5 MiB
        assert send(port, instance) == Status.SUCCESS  # and it keeps serving
    finally:
        server.shutdown()
    assert refusals(engine) == ["0xA700"]
    with sessions.begin() as session:
        [reason] = session.scalars(select(AuditEvent.details["reason"].as_string())
                                   .where(AuditEvent.action == "instance.refused"))
    assert "exceeds the limit of 1.0 MiB" in reason
    assert len(list((root / "instances").rglob("*.dcm"))) == 1


def test_a_large_dataset_streams_to_disk_not_memory(
    scp: tuple[int, Intake, Path], instance: pydicom.Dataset, tmp_path: Path
) -> None:
    """A 64 MiB dataset costs the receiving process a few MiB of Python memory: pynetdicom
    writes it to a file as it arrives and intake reads only the header and renames the file.
    dcmtk storescu sends it from another process, so all memory traced here is the receiver's."""
    import subprocess
    import tracemalloc

    from tests.conftest import require_tool

    port, _, root = scp
    large = large_instance(instance, 512)  # 512 frames of 128 KiB
    payload = 512 * len(instance.PixelData)
    assert payload >= 64 * 2**20
    path = tmp_path / "large.dcm"
    large.save_as(path, enforce_file_format=True)
    del large
    tracemalloc.start()
    try:
        sent = subprocess.run([require_tool("storescu"), "-aet", "SCANNER", "-aec", "LACUNA",
                               "127.0.0.1", str(port), str(path)],
                              capture_output=True, text=True, timeout=120)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sent.returncode == 0, sent.stderr
    [stored] = (root / "instances").rglob("*.dcm")
    assert stored.stat().st_size > payload  # file meta is the receiver's own
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB for {payload / 2**20:.0f} MiB"


def test_a_streamed_dataset_cut_short_is_refused(
    engine: Engine, tmp_path: Path, instance: pydicom.Dataset
) -> None:
    """A value left on disk (too big to read at intake) must still lie inside the file."""
    from node.dicom.ports import ReceivedInstance
    from node.errors import InstanceRejected

    upgrade(engine)
    path = tmp_path / "incoming.dcm"
    large_instance(instance, 16).save_as(path, enforce_file_format=True)  # 2 MiB: deferred
    with path.open("rb+") as stream:
        stream.truncate(path.stat().st_size - 1000)
    large = pydicom.dcmread(path, stop_before_pixels=True)
    intake = Intake(tmp_path / "storage", session_factory(engine))
    with pytest.raises(InstanceRejected) as refused:
        intake.store(ReceivedInstance(path, "SCANNER", "127.0.0.1", str(large.SOPClassUID),
                                      str(large.SOPInstanceUID)))
    assert refused.value.status == Status.CANNOT_UNDERSTAND
    assert "the dataset ends before them" in refused.value.reason


@pytest.mark.parametrize("moved", ["series", "study"])
def test_an_instance_resent_under_another_series_or_study_is_refused(
    scp: tuple[int, Intake, Path], engine: Engine, instance: pydicom.Dataset, moved: str
) -> None:
    port, _, root = scp
    assert send(port, instance) == Status.SUCCESS
    first = {p.relative_to(root) for p in (root / "instances").rglob("*.dcm")}
    again = copy.deepcopy(instance)
    if moved == "series":
        again.SeriesInstanceUID = pydicom.uid.generate_uid()
    else:
        again.StudyInstanceUID = pydicom.uid.generate_uid()
    assert send(port, again) == Status.DUPLICATE_SOP_INSTANCE
    assert refusals(engine) == ["0x0111"]
    # The stored instance stays where it was, indexed there; the refused copy is not kept.
    assert {p.relative_to(root) for p in (root / "instances").rglob("*.dcm")} == first
    with session_factory(engine).begin() as session:
        rows = session.execute(text("SELECT i.path, s.series_instance_uid FROM instances i "
                                    "JOIN series s ON s.id = i.series_id")).all()
        [reason] = session.scalars(select(AuditEvent.details)
                                   .where(AuditEvent.action == "instance.refused"))
    assert [(Path(path), uid) for path, uid in rows] == [
        (next(iter(first)), str(instance.SeriesInstanceUID))]
    assert "another series or study" in reason["reason"]
    # An identical re-send in its own series is still a duplicate, answered with success.
    assert send(port, instance) == Status.SUCCESS


def test_maximum_length_values_index_alike_on_both_databases(
    scp: tuple[int, Intake, Path], engine: Engine, instance: pydicom.Dataset
) -> None:
    port, _, _ = scp
    longest = copy.deepcopy(instance)
    longest.SpecificCharacterSet = "ISO_IR 192"
    longest.PatientID = "Ü" * 64  # LO: 64 characters, 128 bytes in UTF-8
    longest.AccessionNumber = "Ä" * 16  # SH: 16
    longest.SeriesDescription = "é" * 64  # LO: 64
    assert send(port, longest) == Status.SUCCESS
    # A sender's non-conforming longer value: accepted on either database, indexed clipped.
    over = copy.deepcopy(instance)
    over.StudyInstanceUID, over.SeriesInstanceUID, over.SOPInstanceUID = (
        pydicom.uid.generate_uid() for _ in range(3))
    over.AccessionNumber = "A" * 20
    over.PatientID = "P" * 70
    over.StudyDate = "2026-01-01"  # an old ACR-NEMA style date, 10 characters
    assert send(port, over) == Status.SUCCESS
    assert refusals(engine) == []
    with session_factory(engine).begin() as session:
        studies = dict(session.execute(text(
            "SELECT s.accession_number, p.patient_id FROM studies s "
            "JOIN patients p ON p.id = s.patient_id")).all())
        descriptions = set(session.scalars(text("SELECT series_description FROM series")))
        columns = {c["name"] for c in inspect(session.connection()).get_columns("patients")}
    assert studies == {"Ä" * 16: "Ü" * 64, "A" * 16: "P" * 64}
    assert "é" * 64 in descriptions
    assert "patient_name" not in columns  # the node never reads a patient's name: not stored
