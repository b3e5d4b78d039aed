"""Transfer syntaxes by DICOM keyword (PS3.6 Annex A): those written uncompressed, which a
result can be re-encoded to for any C-STORE peer, and the compressed ones the node can decode."""

from __future__ import annotations

UNCOMPRESSED: dict[str, str] = {
    "ImplicitVRLittleEndian": "1.2.840.10008.1.2",
    "ExplicitVRLittleEndian": "1.2.840.10008.1.2.1",
    "DeflatedExplicitVRLittleEndian": "1.2.840.10008.1.2.1.99",
    "ExplicitVRBigEndian": "1.2.840.10008.1.2.2",
}
COMPRESSED: dict[str, str] = {
    "JPEGBaseline8Bit": "1.2.840.10008.1.2.4.50",
    "JPEGExtended12Bit": "1.2.840.10008.1.2.4.51",
    "JPEGLossless": "1.2.840.10008.1.2.4.57",
    "JPEGLosslessSV1": "1.2.840.10008.1.2.4.70",
    "JPEGLSLossless": "1.2.840.10008.1.2.4.80",
    "JPEGLSNearLossless": "1.2.840.10008.1.2.4.81",
    "JPEG2000Lossless": "1.2.840.10008.1.2.4.90",
    "JPEG2000": "1.2.840.10008.1.2.4.91",
    "RLELossless": "1.2.840.10008.1.2.5",
}


def uncompressed_uid(text: str) -> str | None:
    """The UID of the uncompressed transfer syntax named by ``text`` (its UID or keyword)."""
    if text in UNCOMPRESSED:
        return UNCOMPRESSED[text]
    return text if text in UNCOMPRESSED.values() else None
