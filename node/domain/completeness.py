"""When a study is complete enough to process."""

from __future__ import annotations

from datetime import datetime, timedelta


def is_stable(last_received_at: datetime, now: datetime, stable_seconds: float) -> bool:
    """A study is ready once no instance has arrived for ``stable_seconds``."""
    return now - last_received_at >= timedelta(seconds=stable_seconds)
