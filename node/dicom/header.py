"""What intake reads of every received instance, read one of two ways: directly from the raw
bytes of a file :func:`node.dicom.part10.read_part10` read (the common case), or through
pydicom's converted values (anything else). The same bytes give the same header either way
(tests/unit/test_part10_reading.py); the direct reader declines (None) whatever is not plainly
encoded, and pydicom reads it.

pydicom converts a value in about ten microseconds, and intake read a dozen of them, some
twice, for every instance: about 0.15 ms of the 2.5 ms of CPU the receiver spent per instance.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import UID

from node.dicom.part10 import Part10

_SOP_CLASS_UID = Tag("SOPClassUID")
_SOP_INSTANCE_UID = Tag("SOPInstanceUID")
_STUDY_INSTANCE_UID = Tag("StudyInstanceUID")
_SERIES_INSTANCE_UID = Tag("SeriesInstanceUID")
_INSTANCE_NUMBER = Tag("InstanceNumber")
_PRIORITY = Tag("RequestedProcedurePriority")
_REQUEST_ATTRIBUTES = Tag("RequestAttributesSequence")
_ROWS, _COLUMNS = Tag("Rows"), Tag("Columns")
_SAMPLES, _FRAMES, _BITS = Tag("SamplesPerPixel"), Tag("NumberOfFrames"), Tag("BitsAllocated")
_PIXEL_DATA = Tag("PixelData")
_TRANSFER_SYNTAX = Tag("TransferSyntaxUID")
# What the Request Attributes Sequence's priorities are read with (its text's character set).
_PRIORITY_TAGS = (Tag("SpecificCharacterSet"), _REQUEST_ATTRIBUTES)
_INTEGER = re.compile(r" *[+-]?[0-9]{1,12} *")
_US = struct.Struct("<H")


class HeaderError(ValueError):
    """A value intake needs cannot be read (the instance cannot be understood)."""


@dataclass(frozen=True)
class InstanceHeader:
    """The values intake reads of every instance. A UID is None when the element is absent
    ("" when empty); pixel lengths are in bytes."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    transfer_syntax_uid: str
    instance_number: int | None
    priorities: tuple[str, ...]  # Requested Procedure Priority, top level and per request
    native_pixel_bytes: int | None  # None: no pixel data, or encapsulated (compressed)
    expected_pixel_bytes: int | None  # what the image pixel module implies, with native data


def header_from_dataset(dataset: Dataset) -> InstanceHeader:
    """The header through pydicom's values; :class:`HeaderError` for an Instance Number that
    is not an integer or native pixel data without a readable image pixel module. pydicom's
    own errors on malformed values propagate."""
    native = expected = None
    transfer_syntax = UID(str(dataset.file_meta.TransferSyntaxUID))
    if _PIXEL_DATA in dataset and not transfer_syntax.is_compressed:
        raw = dataset.get_item(_PIXEL_DATA, keep_deferred=True)
        native = (raw.length if isinstance(raw, RawDataElement) and raw.value is None
                  else len(dataset.PixelData))
        try:
            expected = (
                int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel", 1))
                * int(dataset.get("NumberOfFrames", 1) or 1) * int(dataset.BitsAllocated) // 8
            )
        except (AttributeError, TypeError, ValueError):
            raise HeaderError("pixel data without a valid image pixel module") from None
    return InstanceHeader(
        sop_class_uid=_text(dataset, "SOPClassUID"),
        sop_instance_uid=_text(dataset, "SOPInstanceUID"),
        study_instance_uid=_text(dataset, "StudyInstanceUID"),
        series_instance_uid=_text(dataset, "SeriesInstanceUID"),
        transfer_syntax_uid=str(transfer_syntax),
        instance_number=_instance_number(dataset.get("InstanceNumber")),
        priorities=_priorities(str(dataset.get("RequestedProcedurePriority", "") or ""),
                               _requests(dataset)),
        native_pixel_bytes=native,
        expected_pixel_bytes=expected,
    )


def _text(dataset: Dataset, keyword: str) -> str | None:
    return str(dataset[keyword].value) if keyword in dataset else None


def _instance_number(value: Any) -> int | None:
    """Instance Number (an IS) as an integer, None when absent or empty."""
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise HeaderError(f"Instance Number {str(value)[:16]!r} is not an integer") from None


def _requests(dataset: Dataset) -> list[Dataset]:
    """The items of ``dataset``'s Request Attributes Sequence (0040,0275), if any."""
    return list(dataset.get("RequestAttributesSequence", []) or [])


def _priorities(top_level: str, requests: list[Dataset]) -> tuple[str, ...]:
    """Requested Procedure Priority (0040,1003): ``top_level`` and each of ``requests``' (the
    Request Attributes Sequence's items, read through pydicom: one small sequence), the
    empty ones left out."""
    values = [top_level]
    for item in requests:
        values.append(str(item.get("RequestedProcedurePriority", "") or ""))
    return tuple(v for v in values if v)


class _NotPlain(Exception):
    """A value the direct reader leaves to pydicom."""


def header_from_part10(part10: Part10) -> InstanceHeader | None:
    """The header read directly from the bytes of a file :func:`node.dicom.part10.read_part10`
    read, converting nothing but the Request Attributes Sequence (when there is one); None
    when a value is not plainly encoded (a multi-valued UID, an Instance Number that is not a
    plain integer, an image pixel value of another VR or length): read the dataset with
    :func:`header_from_dataset` then."""
    try:
        syntax = part10.meta.get(_TRANSFER_SYNTAX)
        transfer_syntax = UID(_decoded(part10.data[syntax[2]:syntax[3]]) if syntax else "")
        native = expected = None
        pixel_data = part10.elements.get(_PIXEL_DATA)
        if pixel_data is not None and not transfer_syntax.is_compressed:
            native = pixel_data[1]
            frames = _plain_text(part10, _FRAMES, "IS")
            expected = (_plain_us(part10, _ROWS) * _plain_us(part10, _COLUMNS)
                        * (_plain_us(part10, _SAMPLES) if _SAMPLES in part10.elements else 1)
                        * ((_integer(frames) or 1) if frames else 1)
                        * _plain_us(part10, _BITS) // 8)
        number = _plain_text(part10, _INSTANCE_NUMBER, "IS")
        priority = _plain_text(part10, _PRIORITY, "SH") or ""
        return InstanceHeader(
            sop_class_uid=_plain_text(part10, _SOP_CLASS_UID, "UI"),
            sop_instance_uid=_plain_text(part10, _SOP_INSTANCE_UID, "UI"),
            study_instance_uid=_plain_text(part10, _STUDY_INSTANCE_UID, "UI"),
            series_instance_uid=_plain_text(part10, _SERIES_INSTANCE_UID, "UI"),
            transfer_syntax_uid=str(transfer_syntax),
            instance_number=_integer(number) if number else None,
            # Most files have no Request Attributes Sequence: no pydicom dataset is built then.
            priorities=_priorities(priority, _requests(part10.dataset(_PRIORITY_TAGS))
                                   if _REQUEST_ATTRIBUTES in part10.elements else []),
            native_pixel_bytes=native,
            expected_pixel_bytes=expected,
        )
    except _NotPlain:
        return None


def _decoded(value: bytes) -> str:
    """A string value as pydicom gives it: ISO 8859-1, trailing spaces and NULs removed."""
    return value.decode("latin-1").rstrip(" \x00")


def _plain_text(part10: Part10, tag: int, vr: str) -> str | None:
    """A single-valued string's text; None when absent."""
    found = part10.value(tag)
    if found is None:
        return None
    if found[0] != vr:
        raise _NotPlain
    text = _decoded(found[1])
    if "\\" in text:
        raise _NotPlain
    return text.strip() if vr == "UI" else text  # pydicom's UID strips whitespace


def _plain_us(part10: Part10, tag: int) -> int:
    found = part10.value(tag)
    if found is None or found[0] != "US" or len(found[1]) != 2:
        raise _NotPlain
    value: int = _US.unpack(found[1])[0]
    return value


def _integer(text: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise _NotPlain
    return int(text)
