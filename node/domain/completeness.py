"""When a study is complete enough to process.

DICOM has no "study complete" message, so the node infers it (times in seconds):

1. **Early start**: the T2 FLAIR series and the T1 FLAIR series both announced how many
   instances they hold (Images in Acquisition, or a vendor's equivalent) and all of them are
   here: process now, without waiting for the quiet period.
2. **Quiet period**: no instance for ``quiet_seconds``: process, unless a FLAIR series is
   still short of the instances it announced, or there is a T2 FLAIR but no T1 FLAIR yet (the
   T1 FLAIR often comes minutes later from the same scanner); then wait up to
   ``missing_wait_seconds`` after the last instance for the rest. Urgent studies do not wait.
3. **Maximum wait**: ``max_wait_seconds`` after the first instance a study is processed even if
   instances keep coming (a stream that never falls quiet must not starve).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from node.domain.series import SeriesRole


@dataclass(frozen=True)
class CompletenessRules:
    quiet_seconds: float = 30.0
    missing_wait_seconds: float = 120.0
    max_wait_seconds: float = 1800.0


@dataclass(frozen=True)
class SeriesProgress:
    """One series of a study: its role so far, instances here, instances it announced."""

    role: SeriesRole
    received: int
    expected: int | None = None

    @property
    def complete(self) -> bool:
        return self.expected is not None and self.received >= self.expected

    @property
    def short(self) -> bool:
        return self.expected is not None and self.received < self.expected


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str


def is_stable(last_received_at: datetime, now: datetime, stable_seconds: float) -> bool:
    """No instance has arrived for ``stable_seconds``."""
    return now - last_received_at >= timedelta(seconds=stable_seconds)


def readiness(
    series: list[SeriesProgress],
    first_received_at: datetime,
    last_received_at: datetime,
    now: datetime,
    rules: CompletenessRules,
    urgent: bool = False,
) -> Readiness:
    """Whether to process the study now, and why (for the audit trail)."""
    waited = (now - first_received_at).total_seconds()
    quiet = (now - last_received_at).total_seconds()
    if waited >= rules.max_wait_seconds:
        return Readiness(True, f"maximum wait of {rules.max_wait_seconds:g} s reached")
    t2 = [s for s in series if s.role is SeriesRole.T2_FLAIR]
    t1 = [s for s in series if s.role is SeriesRole.T1_FLAIR]
    if t2 and t1 and all(s.complete for s in t2 + t1):
        return Readiness(True, "every announced instance of the T2 FLAIR and T1 FLAIR is here")
    if quiet < rules.quiet_seconds:
        return Readiness(False, "receiving")
    reason = f"quiet for {rules.quiet_seconds:g} s"
    if urgent or not t2:
        return Readiness(True, reason)
    missing = ("a FLAIR series is short of the instances it announced"
               if any(s.short for s in t2 + t1)
               else "no T1 FLAIR yet" if not t1 else None)
    if missing is None:
        return Readiness(True, reason)
    if quiet < rules.missing_wait_seconds:
        return Readiness(False, f"{missing}; waiting up to {rules.missing_wait_seconds:g} s")
    return Readiness(True, f"{reason}; {missing} after {rules.missing_wait_seconds:g} s")
