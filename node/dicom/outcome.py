"""What happened to one object sent to a destination, by either protocol."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SendOutcome:
    path: Path
    sop_instance_uid: str
    status: int | None  # None: no response (association lost)
