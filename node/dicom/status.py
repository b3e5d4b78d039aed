"""DICOM status codes we answer with, by name (PS3.4 Annex B and PS3.7 Annex C)."""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    SUCCESS = 0x0000
    # Storage Service Class failures (PS3.4 B.2.3).
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    # General failures (PS3.7 C.4.1).
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    SOP_CLASS_NOT_SUPPORTED = 0x0122


def is_success(status: int) -> bool:
    return status == Status.SUCCESS


def is_warning(status: int) -> bool:
    return status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF
