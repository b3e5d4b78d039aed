"""Intake: a received instance becomes a durable file plus index and audit rows, or a refusal.

Contract: :meth:`Intake.store` returns only after the file is fsynced and the transaction that
indexes it (with its audit row) has committed; otherwise it raises, and the SCP answers a
failure status.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any, TypeGuard

from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag
from sqlalchemy import Connection, Engine, bindparam, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from node.db.engine import SessionFactory
from node.db.tables import AuditEvent, Base, utcnow
from node.dicom import frames
from node.dicom.header import HeaderError, InstanceHeader, header_from_dataset, header_from_part10
from node.dicom.part10 import Part10, read_part10
from node.dicom.ports import ReceivedInstance
from node.dicom.status import Status
from node.dicom.storage import (
    InvalidUid,
    checked_uid,
    fsync_directory,
    move_atomically,
    relative_path,
    write_atomically,
)
from node.domain.jobs import StudyState
from node.domain.priority import UrgencyRule
from node.errors import InstanceRejected, StorageError
from node.services import audit
from node.services.group_commit import GroupCommit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredInstance:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    duplicate: bool


def _strings(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def _number(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def series_attributes(dataset: Dataset) -> dict[str, Any]:
    """The acquisition attributes the series-role classifier reads, as JSON (from the
    functional groups for a multi-frame image)."""
    acquisition = frames.acquisition_attributes(dataset)
    return {
        "modality": str(dataset.get("Modality", "")),
        "sop_class_uid": str(dataset.SOPClassUID),
        "image_type": list(_strings(dataset.get("ImageType"))),
        "scanning_sequence": list(_strings(acquisition["scanning_sequence"])),
        "scan_options": list(_strings(acquisition["scan_options"])),
        "repetition_time": _number(acquisition["repetition_time"]),
        "echo_time": _number(acquisition["echo_time"]),
        "inversion_time": _number(acquisition["inversion_time"]),
        "derived_by_compression_only": derived_by_compression_only(dataset),
        "expected_instances": None if frames.is_multiframe(dataset) else expected_instances(dataset),
    }


GE_SERIES_CREATOR = "GEMS_SERS_01"  # (0025,xx07): Images in Series


def expected_instances(dataset: Dataset) -> int | None:
    """How many instances the series announces: Images in Acquisition (0020,1002), else GE's
    private Images in Series; None when neither is there or the value is not a count."""
    values: list[Any] = [dataset.get("ImagesInAcquisition")]
    try:
        values.append(dataset.private_block(0x0025, GE_SERIES_CREATOR)[0x07].value)
    except KeyError:
        pass
    for value in values:
        value = getattr(value, "value", value)
        try:
            count = int(value) if value not in (None, "", b"") else 0
        except (TypeError, ValueError):
            continue
        if count > 0:
            return count
    return None


LOSSY_COMPRESSION = ("113040", "DCM")  # Derivation code "Lossy Compression" (CID 7203)


def derived_by_compression_only(dataset: Dataset) -> bool:
    """True when the Derivation Code Sequence lists lossy compression and nothing else."""
    if str(dataset.get("LossyImageCompression", "")) != "01":
        return False
    codes = {(str(item.get("CodeValue", "")), str(item.get("CodingSchemeDesignator", "")))
             for item in dataset.get("DerivationCodeSequence", []) or []}
    return codes == {LOSSY_COMPRESSION}


# The top-level attributes intake reads for every instance (see node.dicom.header): its UIDs,
# its number, the image pixel module (for the pixel data length) and the requested priority,
# converted when pydicom reads the dataset. The series' and the study's attributes are read
# (and so checked) only for the first instance of a new series or study (see _series_row,
# _study_row): converting every value of every instance was a third of decode's CPU time.
_INSTANCE_TAGS = frozenset(
    Tag(keyword) for keyword in (
        "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
        "InstanceNumber", "RequestedProcedurePriority", "NumberOfFrames", "Rows", "Columns",
        "SamplesPerPixel", "BitsAllocated",
    )
)

# Values larger than this are left on disk when a dataset is read from a file (large
# multi-frame pixel data), so memory per association stays small whatever the sender sends.
DEFER_BYTES = 2**20
PIXEL_DATA = Tag("PixelData")
# A received file up to this size is read once, whole: parsed and hashed from memory (a file
# object's tell() is a system call, and the parser asks at every element). Larger ones are
# parsed from the file with their large values left on disk.
READ_WHOLE_BYTES = 2 * DEFER_BYTES


def content(received: ReceivedInstance) -> bytes | None:
    """The dataset's bytes when it is in memory or a file of at most READ_WHOLE_BYTES, else
    None (parse and hash it from its file)."""
    if isinstance(received.data, bytes):
        return received.data
    if received.size > READ_WHOLE_BYTES:
        return None
    try:
        return received.data.read_bytes()
    except OSError as error:
        raise StorageError(f"cannot read the received dataset: {error.strerror}") from error


def decode(received: ReceivedInstance,
           data: bytes | None) -> tuple[InstanceHeader, Callable[[], Dataset]]:
    """Parse and check a received dataset, from ``data`` (see :func:`content`) or, when None,
    from its file: what intake reads of every instance, and a reader of the whole dataset
    (without its pixel data; values converted as they are read) for the first instance of a
    new series or study. :class:`InstanceRejected` with the status to answer."""
    try:
        # The common case, in memory and explicit VR little endian, is read in one pass that
        # walks every value and every sequence item to its end (a truncated transfer or a
        # malformed sequence is not read this way), and its header is read from the bytes.
        # Anything else is pydicom's to read, check and refuse.
        part10 = read_part10(data) if data is not None else None
        header = header_from_part10(part10) if part10 is not None else None
        if part10 is not None and header is not None:
            read = _reader(part10)
        else:
            dataset = _read_checked(received, data)
            header = header_from_dataset(dataset)
            # The index needs none of the pixel data, and a batch of waiting instances
            # should not hold it (up to 2 MiB each) in memory; the file keeps it.
            dataset.pop(PIXEL_DATA, None)
            read = lambda: dataset  # noqa: E731
    except InstanceRejected:
        raise
    except HeaderError as error:
        raise InstanceRejected(Status.CANNOT_UNDERSTAND, str(error)) from None
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OverflowError) as error:
        raise InstanceRejected(Status.CANNOT_UNDERSTAND, f"undecodable dataset: {error}") from None
    except Exception as error:  # pydicom raises assorted errors on corrupt input
        raise InstanceRejected(
            Status.CANNOT_UNDERSTAND, f"undecodable dataset: {type(error).__name__}"
        ) from None
    for keyword, value in (("SOPClassUID", header.sop_class_uid),
                           ("SOPInstanceUID", header.sop_instance_uid),
                           ("StudyInstanceUID", header.study_instance_uid),
                           ("SeriesInstanceUID", header.series_instance_uid)):
        if value is None:
            raise InstanceRejected(Status.CANNOT_UNDERSTAND, f"missing {keyword}")
    if header.sop_instance_uid != received.affected_sop_instance_uid:
        raise InstanceRejected(
            Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "SOP Instance UID differs from the C-STORE request",
        )
    if header.sop_class_uid != received.affected_sop_class_uid:
        raise InstanceRejected(
            Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "SOP Class UID differs from the C-STORE request",
        )
    # Native (uncompressed) pixel data must be as long as its header says.
    actual, expected = header.native_pixel_bytes, header.expected_pixel_bytes
    if actual is not None and expected is not None and actual < expected:
        raise InstanceRejected(
            Status.CANNOT_UNDERSTAND, f"pixel data has {actual} bytes, header needs {expected}"
        )
    return header, read


def _reader(part10: Part10) -> Callable[[], Dataset]:
    """pydicom's view of ``part10`` without its pixel data, made when asked for."""
    return lambda: part10.dataset(tag for tag in part10.elements if tag != PIXEL_DATA)


def _read_checked(received: ReceivedInstance, data: bytes | None) -> Dataset:
    """:func:`decode`'s reading with pydicom, from ``data`` or the file, and its checks."""
    if data is not None:
        dataset = dcmread(BytesIO(data), force=False)
    else:
        assert isinstance(received.data, Path)
        dataset = dcmread(received.data, force=False, defer_size=DEFER_BYTES)
    # One pass: a value, left on disk or read, must be whole (a truncated transfer
    # otherwise passes the parser, which reads short or seeks past); every sequence and
    # every value read for each instance is parsed, so malformed data fails here with a
    # status, not later; other values are stored as received, unparsed.
    for tag in list(dataset.keys()):
        raw = dataset.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement):
            _check_whole(tag, raw, received.size)
            if _is_deferred(raw):
                continue
        if getattr(raw, "VR", None) in ("SQ", None) or tag in _INSTANCE_TAGS:
            _ = dataset[tag].value
    return dataset


def _is_deferred(element: object) -> TypeGuard[RawDataElement]:
    """True for an element whose value was left on disk (see DEFER_BYTES)."""
    return isinstance(element, RawDataElement) and element.value is None


def _check_whole(tag: Any, raw: RawDataElement, file_size: int) -> None:
    """A value of defined length must be whole: read in full, or, left on disk, inside the
    file."""
    if raw.length == 0xFFFFFFFF:
        return
    if raw.value is None:  # left on disk
        whole = raw.value_tell + raw.length <= file_size
    else:
        whole = len(raw.value) >= raw.length
    if not whole:
        raise InstanceRejected(
            Status.CANNOT_UNDERSTAND,
            f"{Tag(tag)} needs {raw.length} bytes; the dataset ends before them",
        )


# Core statements on the index tables, built once. Intake runs per instance at ingest rates,
# and the ORM's unit of work cost more than the statements themselves.
_PATIENTS = Base.metadata.tables["patients"]
_STUDIES = Base.metadata.tables["studies"]
_SERIES = Base.metadata.tables["series"]
_INSTANCES = Base.metadata.tables["instances"]
_FIND_PATIENT = select(_PATIENTS.c.id).where(_PATIENTS.c.patient_id == bindparam("key"))
# A study's row is found and touched in one statement; series rows, never deleted, are
# remembered by the process once committed (see Intake._known_series).
_TOUCH_STUDY_BY_UID = (
    _STUDIES.update().where(_STUDIES.c.study_instance_uid == bindparam("key"))
    .values(last_received_at=bindparam("now"))
    .returning(_STUDIES.c.id, _STUDIES.c.state, _STUDIES.c.urgent))
_FIND_SERIES = select(_SERIES.c.id).where(_SERIES.c.series_instance_uid == bindparam("key"))
_INSTANCE_ROWS = select(_INSTANCES.c.sop_instance_uid, _INSTANCES.c.id, _INSTANCES.c.sha256,
                        _INSTANCES.c.path)
_FIND_INSTANCE = _INSTANCE_ROWS.where(_INSTANCES.c.sop_instance_uid == bindparam("key"))
_FIND_INSTANCES = _INSTANCE_ROWS.where(
    _INSTANCES.c.sop_instance_uid.in_(bindparam("keys", expanding=True)))
# Built once: a statement built per call costs SQLAlchemy a cache key each time.
_INSERT_PATIENT = _PATIENTS.insert().returning(_PATIENTS.c.id)
_INSERT_STUDY = _STUDIES.insert().returning(_STUDIES.c.id)
_INSERT_SERIES = _SERIES.insert().returning(_SERIES.c.id)
_INSERT_INSTANCE = _INSTANCES.insert().returning(_INSTANCES.c.id)
_REPLACE_INSTANCE = _INSTANCES.update().where(_INSTANCES.c.id == bindparam("instance"))
_TOUCH_STUDY = _STUDIES.update().where(_STUDIES.c.id == bindparam("study")).values(
    last_received_at=bindparam("now"))
# How many series IDs a process remembers; past it, it starts again (a lookup each).
KNOWN_SERIES_LIMIT = 10_000


@dataclass
class _StudyRow:
    id: int
    state: str
    urgent: bool


@dataclass
class _BatchRows:
    """What one transaction has already found or created, by UID (or Patient ID): row ids,
    and each study's state as this transaction left it."""

    instances: dict[str, tuple[int, str, str]] = field(default_factory=dict)  # id, sha256, path
    patients: dict[str, int] = field(default_factory=dict)
    studies: dict[str, _StudyRow] = field(default_factory=dict)
    series: dict[str, int] = field(default_factory=dict)

    @classmethod
    def prefetch(cls, connection: Connection, sop_uids: list[str]) -> _BatchRows:
        found = (connection.execute(_FIND_INSTANCE, {"key": sop_uids[0]}) if len(sop_uids) == 1
                 else connection.execute(_FIND_INSTANCES, {"keys": sop_uids}))
        return cls(instances={uid: (row_id, digest, path) for uid, row_id, digest, path in found})


# The most characters each indexed value's VR holds (PS3.5 6.2), and so its column.
INDEX_VR_LENGTH = {"PatientID": 64, "AccessionNumber": 16, "StudyDate": 8, "Modality": 16,
                   "SeriesDescription": 64}


def index_value(dataset: Dataset, keyword: str) -> str:
    """``keyword``'s value for the index, clipped to its VR's length: a sender's non-conforming
    longer value is indexed the same on SQLite and PostgreSQL (whose columns enforce the
    length), and the stored file keeps it whole."""
    return str(dataset.get(keyword, "") or "")[:INDEX_VR_LENGTH[keyword]]


def _series_row(dataset: Dataset) -> dict[str, Any]:
    """A new series' indexed values, read from its first instance; :class:`InstanceRejected`
    (Cannot Understand) when one cannot be read."""
    try:
        series_number = dataset.get("SeriesNumber")
        return {
            "modality": index_value(dataset, "Modality"),
            "series_number": None if series_number in (None, "") else int(series_number),
            "series_description": index_value(dataset, "SeriesDescription"),
            "attributes": series_attributes(dataset),
        }
    except Exception as error:  # pydicom raises assorted errors on malformed values
        raise InstanceRejected(Status.CANNOT_UNDERSTAND,
                               f"unreadable series attributes: {type(error).__name__}") from None


def _study_row(dataset: Dataset) -> dict[str, Any]:
    """A new study's indexed values (and its Patient ID), read from its first instance;
    :class:`InstanceRejected` (Cannot Understand) when one cannot be read."""
    try:
        return {keyword: index_value(dataset, name) for keyword, name in (
            ("patient_id", "PatientID"), ("accession_number", "AccessionNumber"),
            ("study_date", "StudyDate"))}
    except Exception as error:
        raise InstanceRejected(Status.CANNOT_UNDERSTAND,
                               f"unreadable study attributes: {type(error).__name__}") from None


class ConflictingInstance(InstanceRejected):
    """A SOP Instance UID already stored under another series or study."""


@dataclass(frozen=True)
class _Pending:
    """A received instance whose file is in place, waiting for its index rows."""

    dataset: Dataset | None  # None for a series already indexed (see Intake._dataset)
    header: InstanceHeader
    received: ReceivedInstance
    relative: Path
    digest: str
    size: int
    study_uid: str
    series_uid: str
    sop_uid: str

    def stored(self, duplicate: bool) -> StoredInstance:
        return StoredInstance(self.study_uid, self.series_uid, self.sop_uid, duplicate)


class Intake:
    def __init__(
        self,
        storage_root: Path,
        sessions: SessionFactory,
        clock: Callable[[], datetime] = utcnow,
        urgency: UrgencyRule | None = None,
        min_free_bytes: int = 0,
        max_dataset_bytes: int = 0,
    ) -> None:
        self._root = storage_root
        self._min_free_bytes = min_free_bytes
        self._max_dataset_bytes = max_dataset_bytes  # 0: no limit
        # Intake's transactions run on bare Connections of the sessions' engine (see _index).
        self._engine: Engine = sessions.kw["bind"]
        self._clock = clock
        self._urgency = urgency or UrgencyRule()
        # Series rows are never deleted, so a series ID, once committed, holds for the life of
        # the process: the first instance of a series looks it up, the others do not.
        self._known_series: dict[str, int] = {}
        # Associations storing at the same time share a transaction (see GroupCommit).
        self._group: GroupCommit[_Pending, StoredInstance] = GroupCommit(self._write_batch)

    def _check_free_space(self, size: int) -> None:
        """Refuse (Out of Resources) rather than fill the disk the database also lives on."""
        if not self._min_free_bytes:
            return
        try:
            free = shutil.disk_usage(self._root).free
        except OSError as error:
            raise StorageError(f"cannot check free space: {error.strerror}") from error
        if free - size < self._min_free_bytes:
            raise StorageError(f"free disk space {free // 2**20} MiB is below the threshold "
                               f"of {self._min_free_bytes // 2**20} MiB")

    def store(self, received: ReceivedInstance) -> StoredInstance:
        """Keep one instance; returns once it is durable and indexed, else raises
        (:class:`InstanceRejected` with the status to answer, or :class:`StorageError`).
        Callers in several threads at once share a transaction (group commit)."""
        return self._group.submit(self._prepare(received))

    def store_many(self, batch: Sequence[ReceivedInstance]) -> list[StoredInstance | Exception]:
        """Keep several instances, indexed in one transaction where they can be: per instance,
        in order, what :meth:`store` would return or raise. For a caller that batches itself
        (one thread, no group commit)."""
        outcomes: list[StoredInstance | Exception | None] = []
        prepared: list[_Pending] = []
        for received in batch:
            try:
                prepared.append(self._prepare(received))
                outcomes.append(None)
            except Exception as error:
                outcomes.append(error)
        written = iter(self._write_batch(prepared) if prepared else [])
        return [next(written) if outcome is None else outcome for outcome in outcomes]

    def _prepare(self, received: ReceivedInstance) -> _Pending:
        """Check, parse and move ``received`` into storage (its folder not yet synced): the
        instance waiting for its index rows."""
        size = received.size
        if self._max_dataset_bytes and size > self._max_dataset_bytes:
            raise InstanceRejected(
                Status.OUT_OF_RESOURCES,
                f"dataset of {size / 2**20:.1f} MiB exceeds the limit of "
                f"{self._max_dataset_bytes / 2**20:.1f} MiB",
            )
        data = content(received)
        header, read = decode(received, data)
        try:
            study_uid = checked_uid(header.study_instance_uid, "StudyInstanceUID")
            series_uid = checked_uid(header.series_instance_uid, "SeriesInstanceUID")
            sop_uid = checked_uid(header.sop_instance_uid, "SOPInstanceUID")
        except InvalidUid as error:
            raise InstanceRejected(Status.CANNOT_UNDERSTAND, str(error)) from None

        relative = relative_path("instances", study_uid, series_uid, sop_uid)
        self._check_free_space(size)
        digest = hashlib.sha256(data).hexdigest() if data is not None else received.sha256()
        try:
            if isinstance(received.data, Path):
                # The folder's fsync is left to the batch (one per folder, not per file).
                move_atomically(self._root, relative, received.data, sync_directory=False)
            else:
                write_atomically(self._root, relative, received.data)
        except OSError as error:
            raise StorageError(f"cannot write {relative}: {error.strerror}") from error
        # The whole dataset is read only for a series this process has not indexed yet (its
        # study may be new too); for any other, pending holds none of it.
        dataset = None if series_uid in self._known_series else read()
        return _Pending(dataset, header, received, relative, digest, size, study_uid, series_uid,
                        sop_uid)

    def _write_batch(self, batch: Sequence[_Pending]) -> list[StoredInstance | Exception]:
        """Index a batch of stored files in one transaction (after fsyncing their folders, so
        the renames are durable before the rows say they exist). If it fails, each is indexed
        on its own, so one bad instance cannot fail the others."""
        for folder in sorted({self._root / pending.relative.parent for pending in batch}):
            try:
                fsync_directory(folder)
            except OSError as error:
                return [StorageError(f"cannot sync {folder}: {error.strerror}")] * len(batch)
        if len(batch) > 1:
            try:
                with self._engine.begin() as connection:
                    events: list[AuditEvent] = []
                    rows = _BatchRows.prefetch(connection, [pending.sop_uid for pending in batch])
                    stored: list[StoredInstance | Exception] = [
                        pending.stored(self._index(connection, pending, events, rows))
                        for pending in batch]
                    audit.append(connection, events)
                self._remember(rows)
                return stored
            except Exception:
                logger.debug("batch of %d failed; indexing each on its own", len(batch))
        return [self._index_alone(pending) for pending in batch]

    def _index_alone(self, pending: _Pending) -> StoredInstance | Exception:
        # Two processes may create the same study or series at once: the loser of the unique
        # constraint retries and finds the winner's row.
        for attempt in range(3):
            try:
                with self._engine.begin() as connection:
                    events: list[AuditEvent] = []
                    rows = _BatchRows.prefetch(connection, [pending.sop_uid])
                    duplicate = self._index(connection, pending, events, rows)
                    audit.append(connection, events)
                self._remember(rows)
                return pending.stored(duplicate)
            except IntegrityError:
                if attempt == 2:
                    return StorageError(f"cannot index {pending.sop_uid}: constraint conflict")
            except SQLAlchemyError as error:
                return StorageError(f"cannot index {pending.sop_uid}: {type(error).__name__}")
            except InstanceRejected as error:  # a conflict, or a new series' malformed values
                (self._root / pending.relative).unlink(missing_ok=True)  # never indexed
                return error
            except Exception as error:
                return error
        raise AssertionError("unreachable")

    def _remember(self, rows: _BatchRows) -> None:
        """After a commit: the series IDs it found or created hold from now on."""
        if len(self._known_series) + len(rows.series) > KNOWN_SERIES_LIMIT:
            self._known_series.clear()
        self._known_series.update(rows.series)

    def _index(self, connection: Connection, pending: _Pending, events: list[AuditEvent],
               rows: _BatchRows) -> bool:
        """Index rows, with the audit rows appended to ``events`` (the caller chains them with
        :func:`audit.append` before its commit); returns True for an identical re-send, which
        changes nothing but the audit trail. ``rows`` has the batch's instances prefetched and
        carries what earlier items of the same batch (same transaction) looked up or created.
        On a bare Connection, not a Session: the ORM's unit of work cost a fifth of intake's
        CPU per instance. :class:`InstanceRejected` when a new series' or study's attributes
        cannot be read."""
        header, received, relative, digest, size = (
            pending.header, pending.received, pending.relative, pending.digest, pending.size)
        study_uid, series_uid, sop_uid = pending.study_uid, pending.series_uid, pending.sop_uid
        now = self._clock()
        instance = rows.instances.get(sop_uid)
        if instance is not None and instance[2] != str(relative):
            # The rule for a SOP Instance UID re-sent under another series or study: refused,
            # and the copy just written removed; the instance already stored stays where it is.
            raise ConflictingInstance(
                Status.DUPLICATE_SOP_INSTANCE,
                f"SOP Instance UID {sop_uid} is already stored in another series or study; "
                "an instance keeps its series and study (send a corrected instance with a new "
                "SOP Instance UID)")
        duplicate = instance is not None and instance[1] == digest
        audit.record(
            events,
            "instance.received",
            calling_ae=received.calling_ae,
            peer_address=received.peer_address,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            sop_instance_uid=sop_uid,
            sop_class_uid=header.sop_class_uid,
            transfer_syntax_uid=header.transfer_syntax_uid,
            size_bytes=size,
            duplicate=duplicate,
        )
        if duplicate:
            return True

        study = rows.studies.get(study_uid)
        touched = study is None
        if study is None:
            found = connection.execute(_TOUCH_STUDY_BY_UID,
                                       {"key": study_uid, "now": now}).one_or_none()
            study = (_StudyRow(found.id, found.state, bool(found.urgent)) if found is not None
                     else self._new_study(connection, self._dataset(pending), study_uid, rows,
                                          now))
            rows.studies[study_uid] = study
        changes: dict[str, Any] = {}
        if not study.urgent and self._urgency.is_urgent(
            received.calling_ae, header.priorities
        ):
            changes["urgent"] = study.urgent = True
            audit.record(events, "study.urgent", study_instance_uid=study_uid,
                         calling_ae=received.calling_ae, reason="matched the urgency rule")
        if study.state != StudyState.RECEIVING:
            audit.record(
                events, "study.reopened", study_instance_uid=study_uid, previous=study.state,
                reason="new or changed instance after the study was scheduled",
            )
            changes["state"] = study.state = StudyState.RECEIVING
        if changes or not touched:
            connection.execute(_TOUCH_STUDY.values(**changes) if changes else _TOUCH_STUDY,
                               {"study": study.id, "now": now})

        series_id = rows.series.get(series_uid) or self._known_series.get(series_uid)
        if series_id is None:
            series_id = connection.execute(_FIND_SERIES, {"key": series_uid}).scalar()
            if series_id is None:
                series_id = connection.execute(_INSERT_SERIES, {
                    "series_instance_uid": series_uid, "study_id": study.id,
                    **_series_row(self._dataset(pending))}).scalar_one()
        rows.series[series_uid] = series_id

        transfer_syntax = header.transfer_syntax_uid
        if instance is None:
            instance_id = connection.execute(_INSERT_INSTANCE, {
                "sop_instance_uid": sop_uid,
                "series_id": series_id,
                "sop_class_uid": header.sop_class_uid,
                "transfer_syntax_uid": transfer_syntax,
                "instance_number": header.instance_number,
                "path": str(relative),
                "size_bytes": size,
                "sha256": digest,
                "received_at": now,
            }).scalar_one()
        else:  # same SOP Instance UID, new content: the file was replaced; so is its row
            instance_id = instance[0]
            connection.execute(
                _REPLACE_INSTANCE,
                {"instance": instance_id, "size_bytes": size, "sha256": digest, "received_at": now,
                 "transfer_syntax_uid": transfer_syntax})
        rows.instances[sop_uid] = (instance_id, digest, str(relative))
        return False

    def _dataset(self, pending: _Pending) -> Dataset:
        """The whole dataset of ``pending`` (a new series or study reads it), from its stored
        file when it was not kept: this process had indexed its series when it arrived."""
        if pending.dataset is not None:
            return pending.dataset
        try:
            return dcmread(self._root / pending.relative, stop_before_pixels=True)
        except Exception as error:
            raise InstanceRejected(Status.CANNOT_UNDERSTAND,
                                   f"unreadable dataset: {type(error).__name__}") from None

    def _new_study(self, connection: Connection, dataset: Dataset, study_uid: str,
                   rows: _BatchRows, now: datetime) -> _StudyRow:
        """Insert a study (and its patient, when new) in state RECEIVING."""
        values = _study_row(dataset)
        patient_id = values.pop("patient_id")
        patient = rows.patients.get(patient_id)
        if patient is None:
            patient = connection.execute(_FIND_PATIENT, {"key": patient_id}).scalar()
            if patient is None:
                patient = connection.execute(_INSERT_PATIENT, {
                    "patient_id": patient_id,
                }).scalar_one()
            rows.patients[patient_id] = patient
        study_id = connection.execute(_INSERT_STUDY, {
            "study_instance_uid": study_uid,
            "patient_id": patient,
            **values,
            "state": StudyState.RECEIVING,
            "urgent": False,
            "first_received_at": now,
            "last_received_at": now,
        }).scalar_one()
        return _StudyRow(study_id, StudyState.RECEIVING, False)
