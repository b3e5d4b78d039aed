"""Synthetic subjects made on every core: rendering is single-threaded numpy, and each subject
is seeded, so where it is made changes nothing."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def map_on_cores(function: Callable[[Item], Result], items: Iterable[Item],
                 at_least: int = 3) -> Iterator[Result]:
    """``map(function, items)`` in order, on a pool of one process per core when there are
    ``at_least`` items and two cores or more. ``function`` must be importable (a module-level
    function). The pool is spawned, not forked: this process may hold TensorFlow's threads,
    which a fork would copy."""
    work = list(items)
    workers = min(os.cpu_count() or 1, len(work))
    if workers < 2 or len(work) < at_least:
        yield from map(function, work)
        return
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        yield from pool.map(function, work, chunksize=1)
