"""``lacuna serve | scp | worker``: the node's roles, in one process or apart."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import threading
from typing import Any

from node.cli.receivers import fork_receivers, watch_receivers
from node.config import Settings
from node.console import EXIT_OK

logger = logging.getLogger("lacuna")


def register(commands: Any) -> None:
    for name, help_text in (("serve", "run the embedded node: SCP, scheduler and worker"),
                            ("scp", "only receive and store (never loads a model)"),
                            ("worker", "only schedule and run jobs (no DICOM listener)")):
        commands.add_parser(name, help=help_text).set_defaults(handler=serve)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    from node.app import EmbeddedNode, receive_on_the_storage_volume

    receive, process = {"serve": (True, True), "scp": (True, False), "worker": (False, True)}[
        args.command
    ]
    logger.info("starting %s with %s", args.command,
                json.dumps(settings.describe(), default=str))
    children: list[int] = []
    if receive:
        receive_on_the_storage_volume(settings)
        # Before any thread or database connection exists, so forking is safe.
        children = fork_receivers(settings, settings.scp.processes - 1)
    node = EmbeddedNode(settings, receive=receive, process=process)
    node.start()

    def stop(signum: int, _frame: Any) -> None:
        logger.info("signal %d: stopping", signum)
        node.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if children:
        threading.Thread(target=watch_receivers, args=(children, node), daemon=True).start()
    node.wait()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    node.stop()  # finishes or releases a running job; nothing stays half-claimed
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    logger.info("stopped")
    return EXIT_OK
