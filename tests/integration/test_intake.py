"""Intake on both databases: a batch is indexed together and refuses only its bad instances;
values read only for a new series, a new instance or from memory are still checked, and what
fails them is answered Cannot Understand with nothing kept."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import Engine, func, select

from node.db.engine import SessionFactory, session_factory, upgrade
from node.db.tables import Instance, Series
from node.dicom.ports import ReceivedInstance
from node.dicom.status import Status
from node.errors import InstanceRejected
from node.services.intake import Intake, StoredInstance
from training.synth import write_study


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    study = write_study(tmp_path_factory.mktemp("intake"), seed=13, include_t1=False,
                        lesion_count=1)
    return sorted(next(iter(study.series.values())))[:3]


def encoded(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def as_file(tmp_path: Path, dataset: Dataset, name: str, cut: int = 0) -> ReceivedInstance:
    """``dataset`` as a received file (as both receivers hand it over), ``cut`` bytes short."""
    data = encoded(dataset)
    path = tmp_path / name
    path.write_bytes(data[:len(data) - cut])
    return ReceivedInstance(path, "SCANNER", "127.0.0.1", str(dataset.SOPClassUID),
                            str(dataset.SOPInstanceUID))


def malformed(tmp_path: Path, dataset: Dataset, keyword: str, value: bytes) -> ReceivedInstance:
    """``dataset`` received with ``keyword``'s value replaced by ``value`` (four characters its
    VR cannot hold, as a sender may send them; pydicom would not write them)."""
    assert len(value) == 4
    # The value is written as a four-digit placeholder, then swapped byte for byte; the
    # placeholder must occur nowhere else, and the study's UIDs are random digits.
    for number in range(7531, 10000):
        placeholder = str(number).encode()
        setattr(dataset, keyword, number)
        data = encoded(dataset)
        if data.count(placeholder) == 1:
            break
    else:
        raise AssertionError("no four-digit placeholder occurs only once")
    path = tmp_path / "malformed.dcm"
    path.write_bytes(data.replace(placeholder, value))
    return ReceivedInstance(path, "SCANNER", "127.0.0.1", str(dataset.SOPClassUID),
                            str(dataset.SOPInstanceUID))


def new_intake(engine: Engine, tmp_path: Path) -> tuple[Intake, SessionFactory, Path]:
    """Intake on a migrated database, storing under ``tmp_path/storage``."""
    upgrade(engine)
    sessions = session_factory(engine)
    root = tmp_path / "storage"
    return Intake(root, sessions), sessions, root


def instance_files(root: Path) -> list[Path]:
    return sorted((root / "instances").rglob("*.dcm"))


def test_a_batch_is_indexed_together_and_refuses_only_its_bad_instance(
    engine: Engine, tmp_path: Path, slices: list[Path]
) -> None:
    intake, sessions, root = new_intake(engine, tmp_path)
    first, second = (pydicom.dcmread(path) for path in slices[:2])
    mismatched = as_file(tmp_path, second, "mismatched.dcm")
    mismatched = ReceivedInstance(mismatched.data, "SCANNER", "127.0.0.1",
                                  mismatched.affected_sop_class_uid, "1.2.3.4.5")
    outcomes = intake.store_many([
        as_file(tmp_path, first, "first.dcm"), mismatched, as_file(tmp_path, second, "second.dcm"),
        as_file(tmp_path, first, "again.dcm"),  # the same instance once more: a duplicate
    ])
    stored = [o for o in outcomes if isinstance(o, StoredInstance)]
    assert [o.duplicate for o in stored] == [False, False, True]
    assert isinstance(outcomes[1], InstanceRejected)
    assert outcomes[1].status == Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    with sessions.begin() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 2
        assert session.scalar(select(func.count()).select_from(Series)) == 1
    assert len(instance_files(root)) == 2


def test_an_instance_resent_with_new_content_replaces_its_file_and_row(
    engine: Engine, tmp_path: Path, slices: list[Path]
) -> None:
    intake, sessions, root = new_intake(engine, tmp_path)
    first = pydicom.dcmread(slices[0])
    intake.store(as_file(tmp_path, first, "first.dcm"))
    first.ImageComments = "corrected"
    resent = as_file(tmp_path, first, "corrected.dcm")
    size, digest = resent.size, resent.sha256()  # before intake moves the file
    assert intake.store(resent).duplicate is False
    with sessions.begin() as session:
        (row,) = session.scalars(select(Instance)).all()
        assert (row.size_bytes, row.sha256) == (size, digest)
    (stored,) = instance_files(root)
    assert pydicom.dcmread(stored).ImageComments == "corrected"


@pytest.mark.parametrize(("keyword", "value"), [("SeriesNumber", b"1.5x"),
                                                ("InstanceNumber", b"sev7")])
def test_an_unreadable_number_is_refused_and_nothing_is_kept(
    engine: Engine, tmp_path: Path, slices: list[Path], keyword: str, value: bytes
) -> None:
    """Series Number is read only for a series' first instance, Instance Number for each new
    instance; either way, a value that is not an integer is Cannot Understand, not a failure
    that leaves an unindexed file behind."""
    intake, sessions, root = new_intake(engine, tmp_path)
    with pytest.raises(InstanceRejected) as refused:
        intake.store(malformed(tmp_path, pydicom.dcmread(slices[0]), keyword, value))
    assert refused.value.status == Status.CANNOT_UNDERSTAND
    assert instance_files(root) == []
    with sessions.begin() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0
    # The series is made by its next, readable instance.
    intake.store(as_file(tmp_path, pydicom.dcmread(slices[1]), "good.dcm"))
    with sessions.begin() as session:
        assert session.scalar(select(func.count()).select_from(Series)) == 1


def test_a_small_dataset_cut_inside_a_value_is_refused(
    engine: Engine, tmp_path: Path, slices: list[Path]
) -> None:
    """Read whole into memory, a file cut short must not pass with a short value."""
    upgrade(engine)
    intake = Intake(tmp_path / "storage", session_factory(engine))
    dataset = pydicom.dcmread(slices[2])
    with pytest.raises(InstanceRejected) as refused:
        intake.store(as_file(tmp_path, dataset, "cut.dcm", cut=100))
    assert refused.value.status == Status.CANNOT_UNDERSTAND
    assert "the dataset ends before them" in refused.value.reason
    assert instance_files(tmp_path / "storage") == []
