"""Job states, the transitions between them, and the retry policy."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    # RUNNING -> RUNNING: another worker reclaims a job whose lease expired.
    JobState.RUNNING: frozenset(
        {JobState.RUNNING, JobState.DONE, JobState.FAILED, JobState.QUEUED}
    ),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED, JobState.CANCELLED}),
    JobState.CANCELLED: frozenset({JobState.QUEUED}),
}


class InvalidTransition(ValueError):
    pass


def check_transition(current: JobState, target: JobState) -> None:
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(f"job cannot go from {current} to {target}")


def state_after_failure(attempts: int, max_attempts: int, retryable: bool) -> JobState:
    """QUEUED for another attempt while a retryable failure has attempts left, else FAILED."""
    return JobState.QUEUED if retryable and attempts < max_attempts else JobState.FAILED


def retry_delay(attempt: int, base_seconds: float, max_seconds: float, jitter: float) -> float:
    """Seconds before attempt ``attempt + 1``: exponential from ``base_seconds``, capped at
    ``max_seconds``, scaled by ``jitter`` in [0, 1) to between half and all of it, so workers
    that failed together do not retry together."""
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    ceiling = min(max_seconds, base_seconds * 2 ** max(attempt - 1, 0))
    return ceiling * (0.5 + jitter / 2)


class StudyState(StrEnum):
    RECEIVING = "receiving"  # instances arriving; waits for the quiet period
    SCHEDULED = "scheduled"  # a job was queued for the active model
    NOT_PROCESSABLE = "not_processable"  # no T2 FLAIR series; nothing to run
