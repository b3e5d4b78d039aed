"""What intake reads of every received instance, read one of two ways: directly from the raw
values of a dataset :func:`node.dicom.part10.read_part10` read (the common case), or through
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
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

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
        priorities=_priorities(str(dataset.get("RequestedProcedurePriority", "") or ""), dataset),
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


def _priorities(top_level: str, dataset: Dataset) -> tuple[str, ...]:
    """Requested Procedure Priority (0040,1003): ``top_level`` and each Request Attributes
    Sequence (0040,0275) item's (read through pydicom: a sequence is rare and small)."""
    values = [top_level]
    for item in dataset.get("RequestAttributesSequence", []) or []:
        values.append(str(item.get("RequestedProcedurePriority", "") or ""))
    return tuple(v for v in values if v)


class _NotPlain(Exception):
    """A value the direct reader leaves to pydicom."""


def header_from_raw(dataset: Dataset) -> InstanceHeader | None:
    """The header read directly from the raw explicit VR little endian values of a dataset
    from :func:`node.dicom.part10.read_part10`, converting nothing but the Request Attributes
    Sequence (when there is one); None when a value is not plainly encoded (a multi-valued
    UID, an Instance Number that is not a plain integer, an image pixel value of another VR
    or length): read the dataset with :func:`header_from_dataset` then."""
    try:
        transfer_syntax = UID(_raw_text(dataset.file_meta, _TRANSFER_SYNTAX, "UI") or "")
        native = expected = None
        pixel_data = dataset.get_item(_PIXEL_DATA, keep_deferred=True)
        if pixel_data is not None and not transfer_syntax.is_compressed:
            native = _raw(pixel_data).length
            frames = _raw_text(dataset, _FRAMES, "IS")
            expected = (_raw_us(dataset, _ROWS) * _raw_us(dataset, _COLUMNS)
                        * (_raw_us(dataset, _SAMPLES) if _SAMPLES in dataset else 1)
                        * (_integer(frames) or 1 if frames else 1)
                        * _raw_us(dataset, _BITS) // 8)
        number = _raw_text(dataset, _INSTANCE_NUMBER, "IS")
        return InstanceHeader(
            sop_class_uid=_raw_text(dataset, _SOP_CLASS_UID, "UI"),
            sop_instance_uid=_raw_text(dataset, _SOP_INSTANCE_UID, "UI"),
            study_instance_uid=_raw_text(dataset, _STUDY_INSTANCE_UID, "UI"),
            series_instance_uid=_raw_text(dataset, _SERIES_INSTANCE_UID, "UI"),
            transfer_syntax_uid=str(transfer_syntax),
            instance_number=_integer(number) if number else None,
            priorities=_priorities(_raw_text(dataset, _PRIORITY, "SH") or "", dataset),
            native_pixel_bytes=native,
            expected_pixel_bytes=expected,
        )
    except _NotPlain:
        return None


def _raw(element: Any) -> RawDataElement:
    """``element`` as read by read_part10: raw, explicit VR little endian, not left on disk
    (an empty value may be None)."""
    if not isinstance(element, RawDataElement) or element.is_implicit_VR \
            or not element.is_little_endian or (element.value is None and element.length):
        raise _NotPlain
    return element


def _raw_text(dataset: Dataset, tag: BaseTag, vr: str) -> str | None:
    """A single-valued string's text as pydicom gives it (ISO 8859-1, trailing spaces and
    NULs removed); None when absent."""
    element = dataset.get_item(tag, keep_deferred=True)
    if element is None:
        return None
    raw = _raw(element)
    if raw.VR != vr:
        raise _NotPlain
    text = raw.value.decode("latin-1").rstrip(" \x00") if raw.value else ""
    if "\\" in text:
        raise _NotPlain
    return text


def _raw_us(dataset: Dataset, tag: BaseTag) -> int:
    element = dataset.get_item(tag, keep_deferred=True)
    if element is None:
        raise _NotPlain
    raw = _raw(element)
    if raw.VR != "US" or raw.value is None or len(raw.value) != 2:
        raise _NotPlain
    value: int = _US.unpack(raw.value)[0]
    return value


def _integer(text: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise _NotPlain
    return int(text)
