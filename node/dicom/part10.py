"""The head of a DICOM Part 10 file (PS3.10 7.1): the 128-byte preamble, "DICM" and the file
meta information group, encoded directly.

The asyncio receiver writes one per received instance before streaming the dataset after it;
building it with pydicom's ``Dataset``/``write_file_meta_info`` was a sixth of the receiver's
CPU time per instance. The bytes are the same as pydicom's (tests/unit/test_part10.py).
"""

from __future__ import annotations

import struct

PREAMBLE = b"\x00" * 128 + b"DICM"
FILE_META_INFORMATION_VERSION = b"\x00\x01"
_SHORT = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length (PS3.5 7.1.2)
_LONG = struct.Struct("<HH2s2xI")  # group, element, VR (OB, UN, ...), reserved, 32-bit length


class FileMetaError(ValueError):
    """A value that cannot be written in the file meta (too long for its element)."""


def _short(element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) > 0xFFFE:
        raise FileMetaError(f"(0002,{element:04X}) value of {len(value)} bytes is too long")
    return _SHORT.pack(0x0002, element, vr, len(value)) + value


def _ui(value: bytes) -> bytes:
    """A UI value as stored: padded to even length with one NUL (PS3.5 6.2)."""
    value = value.rstrip(b"\x00 ")
    return value + b"\x00" if len(value) % 2 else value


def _sh(value: bytes) -> bytes:
    return value + b" " if len(value) % 2 else value


def part10_head(sop_class_uid: bytes, sop_instance_uid: bytes, transfer_syntax_uid: str,
                implementation_class_uid: str, implementation_version_name: str) -> bytes:
    """Preamble, prefix and file meta group (explicit VR little endian) of a file holding a
    dataset of ``sop_class_uid``/``sop_instance_uid`` (as received, ASCII) encoded in
    ``transfer_syntax_uid``; the dataset's bytes follow it. Raises :class:`FileMetaError`
    for a value longer than an element can hold."""
    elements = b"".join((
        _LONG.pack(0x0002, 0x0001, b"OB", 2) + FILE_META_INFORMATION_VERSION,
        _short(0x0002, b"UI", _ui(sop_class_uid)),
        _short(0x0003, b"UI", _ui(sop_instance_uid)),
        _short(0x0010, b"UI", _ui(transfer_syntax_uid.encode("ascii"))),
        _short(0x0012, b"UI", _ui(implementation_class_uid.encode("ascii"))),
        _short(0x0013, b"SH", _sh(implementation_version_name.encode("ascii"))),
    ))
    group_length = _SHORT.pack(0x0002, 0x0000, b"UL", 4) + struct.pack("<I", len(elements))
    return PREAMBLE + group_length + elements
