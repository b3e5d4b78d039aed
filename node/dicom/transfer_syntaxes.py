"""The transfer syntaxes the SCP accepts: every one pydicom can decode with the installed
pylibjpeg plugins, so what we store as received we can also read for inference."""

from __future__ import annotations

from pydicom.uid import UID

from node.domain import transfer_syntaxes

UNCOMPRESSED: tuple[UID, ...] = tuple(UID(u) for u in transfer_syntaxes.UNCOMPRESSED.values())
COMPRESSED: tuple[UID, ...] = tuple(UID(u) for u in transfer_syntaxes.COMPRESSED.values())
ACCEPTED: tuple[UID, ...] = UNCOMPRESSED + COMPRESSED
