"""Which studies are urgent: a rule over the calling AE title and the requested priority.

Urgent jobs are claimed before routine ones; within a priority, the oldest first.
"""

from __future__ import annotations

from dataclasses import dataclass

URGENT = 0
ROUTINE = 1
SHADOW = 2  # a candidate model's run: only when no clinical work waits


@dataclass(frozen=True)
class UrgencyRule:
    """A study is urgent when any of its instances came from one of ``calling_aes`` (e.g. the
    emergency department's scanner) or carries a Requested Procedure Priority (0040,1003),
    top level or in the Request Attributes Sequence, in ``requested_priorities``."""

    calling_aes: frozenset[str] = frozenset()
    requested_priorities: frozenset[str] = frozenset({"STAT"})

    def is_urgent(self, calling_ae: str, requested_priorities: tuple[str, ...]) -> bool:
        if calling_ae.strip() in self.calling_aes:
            return True
        return any(p.strip().upper() in self.requested_priorities for p in requested_priorities)


def job_priority(urgent: bool, shadow: bool = False) -> int:
    if shadow:
        return SHADOW
    return URGENT if urgent else ROUTINE
