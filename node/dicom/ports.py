"""What a DICOM receiver needs from the rest of the node, and nothing more: a storage port
that keeps one received instance and answers with the C-STORE status, and a sink for
association events. ``node.app`` wires the node's implementation (``services.reception``)
into whichever receiver runs, so the receivers never import intake, audit or metrics."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class ReceivedInstance:
    """A C-STORE request: the Part 10 dataset as received, in memory or streamed to a file
    (which intake moves into storage when it keeps it), and who sent it."""

    data: bytes | Path
    calling_ae: str
    peer_address: str
    affected_sop_class_uid: str
    affected_sop_instance_uid: str

    @cached_property
    def size(self) -> int:
        """Bytes of the Part 10 file (preamble and file meta included); read once."""
        return self.data.stat().st_size if isinstance(self.data, Path) else len(self.data)

    def sha256(self) -> str:
        if isinstance(self.data, Path):
            with self.data.open("rb") as stream:
                return hashlib.file_digest(stream, "sha256").hexdigest()
        return hashlib.sha256(self.data).hexdigest()


class InstanceStore(Protocol):
    """The storage port."""

    def store(self, received: ReceivedInstance) -> int:
        """Keep ``received`` and return the C-STORE status to answer: success (0x0000) only
        once the instance is durably stored and indexed, and then a file ``data`` has been
        moved into storage (any other status leaves that file to the receiver to remove);
        never raises."""
        ...

    def store_many(self, batch: Sequence[ReceivedInstance]) -> list[int]:
        """:meth:`store` for several instances at once, their index rows written in one
        transaction where they can be: the statuses in order; never raises."""
        ...


class AssociationEvents(Protocol):
    """The events sink: what a receiver reports about associations."""

    def association_accepted(self, calling_ae: str, peer_address: str) -> None: ...

    def association_rejected(self, calling_ae: str, peer_address: str,
                             reason: str | None = None) -> None: ...

    def association_aborted(self, calling_ae: str, peer_address: str, reason: str) -> None:
        """An established association ended by an A-ABORT (either way), a protocol error
        or a lost connection; any instance it was sending was not kept."""
        ...


class Receiver(Protocol):
    """A running receiver, whichever engine: where it listens, and how it stops."""

    @property
    def server_address(self) -> Any:
        """(host, port, ...) as bound."""
        ...

    def shutdown(self) -> None: ...


class Reception(InstanceStore, AssociationEvents, Protocol):
    """Both, as one object: what a receiver is started with."""
