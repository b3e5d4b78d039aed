"""DICOM Part 10 files (PS3.10 7.1), the hot paths encoded and read directly: the head (the
128-byte preamble, "DICM" and the file meta information group) and, for the common case,
a whole file read in one pass.

The asyncio receiver writes one per received instance before streaming the dataset after it;
building it with pydicom's ``Dataset``/``write_file_meta_info`` was a sixth of the receiver's
CPU time per instance. The bytes are the same as pydicom's (tests/unit/test_part10.py).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from pydicom.charset import python_encoding
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

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


# Reading a Part 10 file in one pass (intake's common case) --------------------------------

_ELEMENT_HEAD = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_U32 = struct.Struct("<I")
_TAG_LENGTH = struct.Struct("<HHI")  # an item or delimiter: group, element, 32-bit length
# VRs with a reserved field and a 32-bit length in explicit VR (PS3.5 7.1.2, Table 7.1-1).
_LONG_VRS = frozenset(v.encode() for v in (
    "OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"))
_SHORT_VRS = frozenset(v.encode() for v in (
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH", "SL",
    "SS", "ST", "TM", "UI", "UL", "US"))
_VR_TEXT = {vr: vr.decode("ascii") for vr in _LONG_VRS | _SHORT_VRS}
UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xE000, 0xE00D, 0xE0DD  # in group FFFE
_PIXEL_DATA = 0x7FE00010
_TRANSFER_SYNTAX_UID = 0x00020010
_SPECIFIC_CHARACTER_SET = 0x00080005
# The VRs of the file meta group (PS3.10 7.1): a UL (its group length) must be 4 bytes, as
# pydicom converts it while it reads. Any other VR there is pydicom's to read.
_META_VRS: dict[str, int | None] = {"UL": 4, "OB": None, "UI": None, "SH": None, "AE": None}


_raw = RawDataElement._make
# Where a top-level element is: (VR, value length as encoded, value start, value end).
Element = tuple[str, int, int, int]


class _Outside(Exception):
    """The bytes are not for the fast reader (or not well formed): the caller reads them with
    pydicom, which decides."""


class Part10:
    """A Part 10 file read by :func:`read_part10`: its bytes and where each top-level element
    of its file meta and of its dataset is; nothing converted."""

    __slots__ = ("data", "meta", "elements")

    def __init__(self, data: bytes, meta: dict[int, Element],
                 elements: dict[int, Element]) -> None:
        self.data, self.meta, self.elements = data, meta, elements

    def value(self, tag: int) -> tuple[str, bytes] | None:
        """A top-level dataset element's (VR, value bytes); None when it is absent."""
        element = self.elements.get(tag)
        if element is None:
            return None
        vr, _, start, end = element
        return vr, self.data[start:end]

    def dataset(self, tags: Iterable[int] | None = None) -> Dataset:
        """pydicom's view of the dataset (or of only ``tags``), the file meta in ``file_meta``:
        its values raw, converted when read, as ``pydicom.dcmread`` reads them."""
        chosen = (self.elements if tags is None
                  else {tag: self.elements[tag] for tag in tags if tag in self.elements})
        dataset = Dataset(self._raw_elements(chosen))
        dataset.file_meta = FileMetaDataset(self._raw_elements(self.meta))
        dataset.set_original_encoding(False, True)
        return dataset

    def _raw_elements(self, elements: dict[int, Element]) -> dict[BaseTag, DataElement | RawDataElement]:
        data = self.data
        raw: dict[BaseTag, DataElement | RawDataElement] = {}
        for tag, (vr, length, start, end) in elements.items():
            key = BaseTag(tag)
            value = data[start:end] if length else empty_value_for_VR(vr, raw=True)
            raw[key] = _raw((key, vr, length, value, start, False, True, True, False))
        return raw


def read_part10(data: bytes) -> Part10 | None:
    """The Part 10 file ``data`` read in one pass; or None when it is outside this reader: no
    preamble and prefix, a dataset not in explicit VR little endian (implicit VR, big endian,
    deflated), an element of groups 0000-0007 in the dataset, an unknown VR, an undefined
    length anywhere but a sequence, an item or encapsulated pixel data, or anything
    malformed: a value or item running past its end, a missing delimiter, stray bytes. Then
    read it with pydicom, which accepts or refuses.

    Every sequence's items and nested values are walked to their ends: what it returns is
    whole, and its dataset is what ``pydicom.dcmread`` reads from the same bytes
    (tests/unit/test_part10_reading.py), at a fraction of its cost."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    try:
        meta: dict[int, Element] = {}
        position = _walk(data, 132, len(data), meta, group=0x0002)
        if any(vr not in _META_VRS or _META_VRS[vr] not in (None, length)
               for vr, length, _, _ in meta.values()):
            return None
        syntax = meta.get(_TRANSFER_SYNTAX_UID)
        if syntax is None or syntax[0] != "UI" or not syntax[1]:
            return None
        transfer_syntax = UID(data[syntax[2]:syntax[3]].rstrip(b"\x00 ").decode("ascii"))
        if (transfer_syntax.is_implicit_VR or not transfer_syntax.is_little_endian
                or transfer_syntax.is_deflated):
            return None
        elements: dict[int, Element] = {}
        _walk(data, position, len(data), elements)
    except (_Outside, struct.error, UnicodeDecodeError, ValueError):
        return None
    # A command or file meta group element in the dataset (pydicom reads a leading command
    # set as implicit VR, and warns).
    if any(tag >> 16 < 0x0008 for tag in elements):
        return None
    return Part10(data, meta, elements)


def _walk(data: bytes, position: int, end: int, elements: dict[int, Element] | None,
          group: int | None = None, delimited: bool = False) -> int:
    """Walk explicit VR little endian elements from ``position`` up to ``end`` (exactly), or
    for a ``delimited`` item up to and including its Item Delimitation Item, or with ``group``
    while elements are in that group. Top-level elements go into ``elements`` (nested ones are
    only walked). Returns the position after the last; raises :class:`_Outside`."""
    while position < end:
        if position + 8 > end:
            raise _Outside
        tag_group, number, vr, length = _ELEMENT_HEAD.unpack_from(data, position)
        if group is not None and tag_group != group:
            return position
        if tag_group == 0xFFFE:
            if delimited and number == _ITEM_END and _U32.unpack_from(data, position + 4)[0] == 0:
                return position + 8
            raise _Outside
        tag = tag_group << 16 | number
        if vr in _SHORT_VRS:
            start = position + 8
        elif vr in _LONG_VRS:
            if position + 12 > end:
                raise _Outside
            length = _U32.unpack_from(data, position + 8)[0]
            start = position + 12
        else:
            raise _Outside
        if length == UNDEFINED_LENGTH:
            if vr == b"SQ":
                after = _items(data, start, end, delimited=True)
            elif tag == _PIXEL_DATA and elements is not None and vr in (b"OB", b"OW"):
                after = _fragments(data, start, end)
            else:
                raise _Outside
            value_end = after - 8  # the value stops before the Sequence Delimitation Item
        else:
            value_end = after = start + length
            if after > end:
                raise _Outside
            if vr == b"SQ":
                _items(data, start, after, delimited=False)
        if tag == _SPECIFIC_CHARACTER_SET and not _known_character_sets(vr, data[start:after]):
            raise _Outside
        if elements is not None:
            elements[tag] = (_VR_TEXT[vr], length, start, value_end)
        position = after
    if delimited or position != end:
        raise _Outside
    return position


def _known_character_sets(vr: bytes, value: bytes) -> bool:
    """A Specific Character Set whose every term pydicom knows as written; for any other it
    corrects the term with a warning, or refuses the dataset, as it reads."""
    terms = value.decode("latin-1").rstrip(" \x00").split("\\")
    return vr == b"CS" and all(term in python_encoding for term in terms)


def _items(data: bytes, position: int, end: int, delimited: bool) -> int:
    """Walk a sequence's items from ``position``: to ``end`` exactly, or when ``delimited`` up
    to and including the Sequence Delimitation Item. Returns the position after."""
    while position + 8 <= end:
        group, number, length = _TAG_LENGTH.unpack_from(data, position)
        if group != 0xFFFE:
            raise _Outside
        if number == _SEQUENCE_END and delimited and length == 0:
            return position + 8
        if number != _ITEM:
            raise _Outside
        start = position + 8
        if length == UNDEFINED_LENGTH:
            position = _walk(data, start, end, None, delimited=True)
        else:
            position = start + length
            if position > end:
                raise _Outside
            _walk(data, start, position, None)
    if delimited or position != end:
        raise _Outside
    return position


def _fragments(data: bytes, position: int, end: int) -> int:
    """Walk encapsulated pixel data's items (PS3.5 A.4) up to and including its Sequence
    Delimitation Item; returns the position after."""
    while position + 8 <= end:
        group, number, length = _TAG_LENGTH.unpack_from(data, position)
        if group == 0xFFFE and number == _SEQUENCE_END and length == 0:
            return position + 8
        if group != 0xFFFE or number != _ITEM or length == UNDEFINED_LENGTH:
            raise _Outside
        position += 8 + length
    raise _Outside
