"""What every command line of Lacuna shares (``lacuna``, the admin CLI, and ``lacuna-train``,
the research one): exit codes, the parser that takes ``--config``/``--json`` anywhere, the
settings and logging every command starts with, and one mapping from errors to exit codes.

Exit codes: 0 success, 1 failure, 2 usage error, 3 bad configuration, 4 not found or refused.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.package import PackageError
from node.config import Settings, load_settings
from node.errors import ConfigError, JobError, LacunaError, ModelError
from node.logs import configure_logging

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CONFIG, EXIT_REFUSED = 0, 1, 2, 3, 4

# A command: parsed arguments and the effective settings in, an exit code out.
Handler = Callable[[argparse.Namespace, Settings], int]


class LacunaParser(argparse.ArgumentParser):
    """A parser that takes the global options (``--config``, ``--json``) wherever they are
    typed: before the command or after any subcommand (``lacuna serve --config FILE``).
    Subparsers are made of this class too; an option not typed at one level leaves the
    value of another level alone (SUPPRESS), and :func:`parse_arguments` fills defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                          help="TOML settings (default: LACUNA_CONFIG)")
        self.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                          help="machine-readable output")


def parse_arguments(parser: argparse.ArgumentParser,
                    argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    args.config = getattr(args, "config", None)
    args.json = getattr(args, "json", False)
    return args


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, load the settings, configure logging, run the chosen command's ``handler``
    (set on its subparser) and turn Lacuna's errors into exit codes and one stderr line."""
    args = parse_arguments(parser, argv)
    try:
        settings = load_settings(args.config, os.environ)
    except ConfigError as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level, settings.log_format)
    handler: Handler = args.handler
    try:
        return handler(args, settings)
    except ConfigError as error:  # found at start-up, e.g. a metrics port already taken
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except (ModelError, JobError, PackageError) as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except LookupError as error:
        print(f"{parser.prog}: {error.args[0] if error.args else error}", file=sys.stderr)
        return EXIT_REFUSED
    except LacunaError as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return EXIT_FAILURE


def timestamp(text: str) -> datetime:
    """An ISO time from the command line, UTC if it names no zone."""
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns; the last column is not padded (it may be long)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers) - 1)]
    lines = ["  ".join([c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)] + [row[-1]])
             .rstrip() for row in cells]
    return "\n".join(lines)
