"""Intake's one-pass reading of a received file (node.dicom.part10.read_part10) and of the
values it needs (node.dicom.header): what it reads is what pydicom reads from the same bytes;
what it declines pydicom reads, and whatever pydicom refuses it never accepts."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    MRImageStorage,
)

from node.dicom.header import (
    HeaderError,
    InstanceHeader,
    header_from_dataset,
    header_from_part10,
)
from node.dicom.part10 import read_part10

SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.1"


def encoded(transfer_syntax: UID = ExplicitVRLittleEndian, undefined_sequences: bool = True,
           edit: Callable[[Dataset], None] | None = None) -> bytes:
    """A small MR image as a Part 10 file, with what real headers have: a character set,
    multi-valued and empty values, private elements, nested sequences (one with an empty
    item, one empty), 32-bit-length VRs, and native or encapsulated pixel data."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = SOP_INSTANCE
    ds.StudyDate = "20261207"
    ds.AccessionNumber = ""
    ds.Modality = "MR"
    ds.PatientName = "Müller^Jörg"
    ds.PatientID = "P1"
    ds.add_new(0x00090010, "LO", "LACUNA TEST")
    ds.add_new(0x00091001, "OB", b"\x01\x02\x03\x04")
    ds.add_new(0x00091002, "UT", "a long text value")
    ds.SliceThickness = "5"
    ds.RepetitionTime = "9000"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.3"
    ds.InstanceNumber = "7"
    ds.ImagePositionPatient = [-120.0, -110.5, 33.25]
    ds.RequestedProcedurePriority = "STAT"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113040", "DCM", "Lossy"
    request = Dataset()
    request.RequestedProcedureID = "R1"
    request.RequestedProcedurePriority = "HIGH"
    request.ScheduledProtocolCodeSequence = [code]
    ds.RequestAttributesSequence = [request, Dataset()]
    ds.ReferencedImageSequence = []
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = 4, 6
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.add_new(0x00189087, "FD", 1000.0)  # Diffusion b-value: an FD
    if UID(transfer_syntax).is_compressed:
        ds.PixelData = encapsulate([b"\xff\xd8frame\xff\xd9\x00"])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = bytes(range(48))
    for element in ds.iterall():
        if element.VR == "SQ":
            element.is_undefined_length = undefined_sequences
    if edit is not None:
        edit(ds)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(SOP_INSTANCE)
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def summary(dataset: Dataset) -> list[tuple[Any, ...]]:
    """Every element as pydicom converts it, sequences item by item: (tag, VR, value), or
    (tag, the type of the error pydicom raises converting it)."""
    elements: list[tuple[Any, ...]] = []
    for tag in dataset.keys():
        try:
            element = dataset[tag]
            value = ([summary(item) for item in element.value] if element.VR == "SQ"
                     else element.value)
            elements.append((tag, element.VR, value))
        except Exception as error:
            elements.append((tag, type(error)))
    return elements


def assert_read_alike(ours: Dataset, theirs: Dataset) -> None:
    assert summary(ours) == summary(theirs)
    assert summary(ours.file_meta) == summary(theirs.file_meta)


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, JPEGLSLossless])
@pytest.mark.parametrize("undefined_sequences", [True, False])
def test_read_part10_reads_what_pydicom_reads(transfer_syntax: UID,
                                             undefined_sequences: bool) -> None:
    data = encoded(transfer_syntax, undefined_sequences)
    assert (b"\xfe\xff\xdd\xe0" in data) == (undefined_sequences or transfer_syntax.is_compressed)
    part10 = read_part10(data)
    assert part10 is not None
    ours = part10.dataset()
    assert_read_alike(ours, dcmread(BytesIO(data)))
    assert ours.RequestAttributesSequence[0].ScheduledProtocolCodeSequence[0].CodeValue == "113040"
    assert ours.PatientName == "Müller^Jörg"
    assert part10.value(0x00100020) == ("LO", b"P1")


@pytest.mark.parametrize("transfer_syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_read_part10_declines_other_encodings(transfer_syntax: UID) -> None:
    assert read_part10(encoded(transfer_syntax)) is None


def test_read_part10_declines_a_file_without_its_prefix() -> None:
    data = encoded()
    assert read_part10(data[128:]) is None
    assert read_part10(data[:128] + b"DICX" + data[132:]) is None


@pytest.mark.parametrize("undefined_sequences", [True, False])
def test_read_part10_declines_every_cut_inside_a_value_or_sequence(
        undefined_sequences: bool) -> None:
    """A transfer cut short: either the cut falls between two top-level elements (the file is
    whole as far as it goes, and reads as pydicom reads it) or the reader declines."""
    data = encoded(undefined_sequences=undefined_sequences)
    whole_prefixes = 0
    for end in range(132, len(data)):
        part10 = read_part10(data[:end])
        if part10 is not None:
            whole_prefixes += 1
            assert_read_alike(part10.dataset(), dcmread(BytesIO(data[:end])))
            assert len(part10.elements) < len(dcmread(BytesIO(data)))
    assert 0 < whole_prefixes < 40


def edit_value(keyword: str, value: Any, vr: str | None = None) -> Callable[[Dataset], None]:
    def edit(ds: Dataset) -> None:
        if value is None:
            del ds[keyword]
        elif vr is not None:
            ds.add_new(keyword, vr, value)
        else:
            setattr(ds, keyword, value)
    return edit


HEADER_CASES = {
    "as written": (None, True),
    "number with a space": (edit_value("InstanceNumber", " 12"), True),
    "empty number": (edit_value("InstanceNumber", ""), True),
    "no number": (edit_value("InstanceNumber", None), True),
    "number 1.0": (edit_value("InstanceNumber", "1.0"), False),  # pydicom's IS takes it
    "number x1": (edit_value("InstanceNumber", "91"), False),  # written as x1, below
    "priority with a space": (edit_value("RequestedProcedurePriority", "ROUTINE "), True),
    "no request sequence": (edit_value("RequestAttributesSequence", None), True),
    "two SOP instance UIDs": (edit_value("SOPInstanceUID", ["1.2.3", "1.2.4"]), False),
    "no SOP class": (edit_value("SOPClassUID", None), True),
    "empty study UID": (edit_value("StudyInstanceUID", ""), True),
    "zero frames": (edit_value("NumberOfFrames", "0"), True),
    "two frames": (edit_value("NumberOfFrames", "2"), True),  # pixel data now too short
    "no rows": (edit_value("Rows", None), False),  # native pixel data, no image pixel module
    "two column values": (edit_value("Columns", [4, 4], "US"), False),
    "rows as OB": (edit_value("Rows", b"\x04\x00", "OB"), False),
}


@pytest.mark.parametrize(("edit", "direct"), HEADER_CASES.values(), ids=HEADER_CASES.keys())
def test_the_direct_header_is_pydicoms_or_declines(edit: Callable[[Dataset], None] | None,
                                                   direct: bool) -> None:
    data = encoded(edit=edit).replace(b"\x13\x00IS\x02\x0091", b"\x13\x00IS\x02\x00x1")
    part10 = read_part10(data)
    assert part10 is not None
    header = header_from_part10(part10)
    assert (header is not None) == direct
    try:
        theirs = header_from_dataset(dcmread(BytesIO(data)))
    except HeaderError:
        assert header is None
    else:
        assert header is None or header == theirs


def test_the_header_of_an_encapsulated_image_has_no_native_pixel_length() -> None:
    read = read_part10(encoded(JPEGLSLossless))
    assert read is not None
    header = header_from_part10(read)
    assert header is not None
    assert (header.native_pixel_bytes, header.transfer_syntax_uid) == (None, JPEGLSLossless)
    assert header.priorities == ("STAT", "HIGH")


MUTABLE = encoded(undefined_sequences=True)
MUTABLE_DEFINED = encoded(undefined_sequences=False)
DATASET_START = 144 + int.from_bytes(MUTABLE[140:144], "little")  # after the file meta group


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(defined=st.booleans(), changes=st.lists(
    st.tuples(st.integers(132, len(MUTABLE) - 1), st.integers(0, 255)), min_size=1, max_size=3),
    cut=st.integers(0, 64))
@example(defined=False, changes=[(DATASET_START, 0)], cut=0)  # a command group element first
@example(defined=False, changes=[(DATASET_START + 1, 0)], cut=0)
@example(defined=False, changes=[(DATASET_START + 4, ord("X"))], cut=0)  # an unknown VR
def test_changed_bytes_are_read_as_pydicom_reads_them_or_declined(
        defined: bool, changes: list[tuple[int, int]], cut: int) -> None:
    """Any bytes: what the direct readers accept, pydicom reads, to the same values; the
    direct header is pydicom's, or both refuse, or the direct reader declined."""
    data = bytearray(MUTABLE_DEFINED if defined else MUTABLE)
    for position, value in changes:
        if position < len(data):
            data[position] = value
    mutated = bytes(data[:len(data) - cut])
    part10 = read_part10(mutated)
    if part10 is None:
        return
    theirs = dcmread(BytesIO(mutated))
    assert_read_alike(part10.dataset(), theirs)
    assert outcome(lambda: header_from_part10(part10)) in (None, outcome(
        lambda: header_from_dataset(theirs)))


def outcome(read: Callable[[], InstanceHeader | None]) -> InstanceHeader | str | None:
    """A header reader's header (None: declined), or "refused" when it raises (pydicom's
    errors on a value it cannot convert, or HeaderError)."""
    try:
        return read()
    except Exception:
        return "refused"
