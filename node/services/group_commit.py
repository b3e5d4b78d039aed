"""Group commit: concurrent callers share one transaction (one fsync, one audit-chain append)
instead of paying for one each.

A caller hands in its item and blocks. If no batch is being written, it becomes the leader:
it takes every item waiting (up to ``max_batch``), runs ``write_batch`` on them outside the
lock, and hands each caller its own result or exception. Callers arriving meanwhile wait and
form the next batch. A lone caller is written at once: no timer, no added latency.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Slot(Generic[Item, Result]):
    item: Item
    done: bool = False
    result: Result | None = None
    error: BaseException | None = None
    taken: bool = False  # in a batch being written


class GroupCommit(Generic[Item, Result]):
    def __init__(
        self,
        write_batch: Callable[[Sequence[Item]], Sequence[Result | BaseException]],
        max_batch: int = 64,
    ) -> None:
        """``write_batch`` returns, per item in order, its result or the exception to raise
        in its caller; if it raises, every caller of that batch gets the exception."""
        self._write_batch = write_batch
        self._max_batch = max_batch
        self._condition = threading.Condition()
        self._waiting: list[_Slot[Item, Result]] = []
        self._writing = False

    def submit(self, item: Item) -> Result:
        slot: _Slot[Item, Result] = _Slot(item)
        with self._condition:
            self._waiting.append(slot)
            while not slot.done and (self._writing or slot.taken):
                self._condition.wait()
            if slot.done:
                return self._outcome(slot)
            # The leader's own item first, then whoever else is waiting, oldest first.
            others = [s for s in self._waiting if s is not slot]
            batch = [slot, *others[: self._max_batch - 1]]
            self._waiting = others[self._max_batch - 1:]
            for member in batch:
                member.taken = True
            self._writing = True
        try:
            outcomes: Sequence[Result | BaseException] = self._write_batch([s.item for s in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError("write_batch returned the wrong number of outcomes")
        except BaseException as error:  # every caller of the batch learns it failed
            outcomes = [error] * len(batch)
        with self._condition:
            for member, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    member.error = outcome
                else:
                    member.result = outcome
                member.done = True
            self._writing = False
            self._condition.notify_all()
        return self._outcome(slot)

    @staticmethod
    def _outcome(slot: _Slot[Item, Result]) -> Result:
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]
