"""``lacuna``: the admin CLI of a PACS administrator. One module per command group, each
registering its own subcommands and handler; queries and logic live in the services, process
set-up in :mod:`node.app`. The research commands are ``lacuna-train`` (:mod:`training.cli`),
kept here as aliases for one release.

Exit codes: 0 success, 1 failure, 2 usage error, 3 bad configuration, 4 not found or refused.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from node.cli import audit, db, demo, destinations, jobs, models, render, serve
from node.console import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    LacunaParser,
    format_table,
    run,
)

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "EXIT_REFUSED", "EXIT_USAGE",
           "build_parser", "format_table", "main"]

GROUPS = (serve, db, demo, models, jobs, audit, render, destinations)


def build_parser() -> argparse.ArgumentParser:
    from training import cli as research

    parser = LacunaParser(prog="lacuna", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(commands)
    research.register(commands, alias_of="lacuna")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)
