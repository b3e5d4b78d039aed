"""Extra receiving processes on the SCP's port (``scp.processes``; SO_REUSEPORT shares the
port, the kernel spreads associations over them). Kept here rather than left to systemd or
Kubernetes replicas because one ``lacuna serve`` must be able to use several cores on the
embedded default (one host, SQLite, no orchestrator); with an orchestrator, run replicas of
``lacuna scp`` and leave ``processes`` at 1."""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import replace
from typing import Any

from node.config import Settings
from node.console import EXIT_FAILURE, EXIT_OK

logger = logging.getLogger("lacuna")


def fork_receivers(settings: Settings, count: int) -> list[int]:
    """Fork ``count`` receiving processes; their pids. Call before any thread or database
    connection exists."""
    return [pid for pid in (_fork_one(settings) for _ in range(count)) if pid]


def _fork_one(settings: Settings) -> int:
    """Fork one more receiving process on the shared port; returns its pid in the parent and
    never returns in the child (which exits when SIGTERM stops it). The child has no HTTP
    endpoint: the parent's answers for the host."""
    pid = os.fork()
    if pid:
        return pid
    code = EXIT_FAILURE
    try:
        from node.app import EmbeddedNode

        child = EmbeddedNode(replace(settings, metrics=replace(settings.metrics, enabled=False)),
                             receive=True, process=False)
        child.start()
        signal.signal(signal.SIGTERM, lambda _signum, _frame: child.request_stop())
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards a Ctrl-C as SIGTERM
        logger.info("receiving process %d started", os.getpid())
        child.wait()
        child.stop()
        code = EXIT_OK
    except BaseException:
        logger.exception("receiving process %d failed", os.getpid())
    finally:
        os._exit(code)  # never run the parent's code (atexit, its node) in the child


def watch_receivers(receivers: list[int], node: Any) -> None:
    """Stop the node if a receiving process dies: a supervisor (systemd, Kubernetes) restarts
    the whole set rather than run with fewer receivers than configured."""
    try:
        pid, status = os.wait()
    except ChildProcessError:
        return
    if pid in receivers and not node.stopping:
        logger.error("receiving process %d exited (status %d); stopping", pid, status)
        node.request_stop()
