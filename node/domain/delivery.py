"""Delivery of one result object to one destination: a queue of its own beside the jobs.

``pending`` (due from ``next_attempt_at``) -> ``delivered``, or after the last failed attempt
-> ``dead``; an operator re-queues a dead delivery (``lacuna deliveries retry``). A job is done
once its results are built and queued; a destination that is down does not re-run inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from node.domain.jobs import retry_delay


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True)
class AttemptOutcome:
    """What one failed or successful attempt leads to; ``retry_in_seconds`` is set exactly
    when the delivery stays pending."""

    state: DeliveryState
    retry_in_seconds: float | None = None


def after_attempt(
    attempts: int, delivered: bool, max_attempts: int, base_seconds: float, max_seconds: float,
    jitter: float,
) -> AttemptOutcome:
    """The outcome of attempt number ``attempts`` (1-based); backoff as for jobs."""
    if delivered:
        return AttemptOutcome(DeliveryState.DELIVERED)
    if attempts >= max_attempts:
        return AttemptOutcome(DeliveryState.DEAD)
    return AttemptOutcome(DeliveryState.PENDING,
                          retry_delay(attempts, base_seconds, max_seconds, jitter))

