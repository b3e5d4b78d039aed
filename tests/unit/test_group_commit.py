import threading
import time
from collections.abc import Sequence

import pytest

from node.services.group_commit import GroupCommit


def test_concurrent_callers_share_batches_and_each_gets_its_own_outcome() -> None:
    batches: list[list[int]] = []

    def write(items: Sequence[int]) -> list[int | BaseException]:
        batches.append(list(items))
        time.sleep(0.02)  # a commit's fsync
        return [ValueError(f"odd {i}") if i % 7 == 0 else i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(write, max_batch=8)
    results: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            results[i] = group.submit(i)
        except ValueError as error:
            results[i] = str(error)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(1, 41)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {i: f"odd {i}" if i % 7 == 0 else i * 10 for i in range(1, 41)}
    assert sorted(i for batch in batches for i in batch) == list(range(1, 41))  # each once
    assert max(len(batch) for batch in batches) <= 8
    assert len(batches) < 40  # they did share


def test_a_failed_batch_fails_each_of_its_callers_and_the_next_one_runs() -> None:
    calls = []

    def write(items: Sequence[int]) -> list[int | BaseException]:
        calls.append(list(items))
        if len(calls) == 1:
            raise OSError("disk full")
        return list(items)

    group: GroupCommit[int, int] = GroupCommit(write)
    with pytest.raises(OSError, match="disk full"):
        group.submit(1)
    assert group.submit(2) == 2
