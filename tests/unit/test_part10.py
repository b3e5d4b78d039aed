"""The Part 10 head the asyncio receiver writes is byte for byte what pydicom writes."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom.dsutils import create_file_meta

from node.dicom.part10 import FileMetaError, part10_head

IMPLEMENTATION = ("2.25.238219095383462208262367470587862216714", "LACUNA_ASYNC_1")


def pydicom_head(sop_class: str, sop_instance: str, transfer_syntax: str,
                 version: str = IMPLEMENTATION[1]) -> bytes:
    out = BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, create_file_meta(  # type: ignore[arg-type]
        sop_class_uid=UID(sop_class), sop_instance_uid=UID(sop_instance),
        transfer_syntax=UID(transfer_syntax), implementation_uid=UID(IMPLEMENTATION[0]),
        implementation_version=version))
    return out.getvalue()


@pytest.mark.parametrize(("sop_class", "sop_instance", "transfer_syntax", "version"), [
    ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.4", "1.2.840.10008.1.2.1", IMPLEMENTATION[1]),
    ("1.2.840.10008.5.1.4.1.1.4.1", "1.2.826.0.1.3680043.8.498.12345", "1.2.840.10008.1.2.4.80",
     IMPLEMENTATION[1]),  # odd-length UIDs, padded with NUL
    ("1.2.840.10008.5.1.4.1.1.4", "2.25.1", "1.2.840.10008.1.2", "ODD_VERSION"),
])
def test_head_equals_pydicom_encoding(sop_class: str, sop_instance: str, transfer_syntax: str,
                                      version: str) -> None:
    # The command set carries UIDs padded with a NUL, as a sender puts them on the wire.
    def wire(uid: str) -> bytes:
        return uid.encode() + (b"\x00" if len(uid) % 2 else b"")

    ours = part10_head(wire(sop_class), wire(sop_instance), transfer_syntax, *IMPLEMENTATION[:1],
                       version)
    assert ours == pydicom_head(sop_class, sop_instance, transfer_syntax, version)
    meta = dcmread(BytesIO(ours + b""), force=True).file_meta
    assert (meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID) == (sop_instance,
                                                                         transfer_syntax)


def test_a_value_too_long_for_its_element_is_refused() -> None:
    with pytest.raises(FileMetaError):
        part10_head(b"1" * 70000, b"1.2", "1.2.840.10008.1.2.1", *IMPLEMENTATION)
