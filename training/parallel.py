"""Synthetic subjects made on every core: rendering is single-threaded numpy, and each subject
is seeded, so where it is made changes nothing."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

PARENT_CHECK_S = 1.0
"""How often a worker looks whether the process that started it is still alive (seconds)."""


def map_on_cores(function: Callable[[Item], Result], items: Iterable[Item],
                 at_least: int = 3) -> Iterator[Result]:
    """``map(function, items)`` in order, on a pool of one process per core when there are
    ``at_least`` items and two cores or more. ``function`` must be importable (a module-level
    function). The pool is spawned, not forked: this process may hold TensorFlow's threads,
    which a fork would copy. Workers end themselves within about ``PARENT_CHECK_S`` when this
    process dies without closing the pool (kill -9, an abort in native code)."""
    work = list(items)
    workers = min(os.cpu_count() or 1, len(work))
    if workers < 2 or len(work) < at_least:
        yield from map(function, work)
        return
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                             initializer=_end_with_parent, initargs=(os.getpid(),)) as pool:
        yield from pool.map(function, work, chunksize=1)


def _end_with_parent(parent_pid: int) -> None:
    """Pool initializer: a daemon thread that ends this worker once ``parent_pid`` is no longer
    its parent. Python's process pool does not watch its parent, and an orphaned worker held
    open whatever pipes it inherited (a wrapper script then waited for it forever)."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()
