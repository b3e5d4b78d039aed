"""``lacuna db``: the database schema."""

from __future__ import annotations

import argparse
from typing import Any

from node.config import Settings
from node.console import EXIT_OK


def register(commands: Any) -> None:
    db = commands.add_parser("db", help="database schema")
    db.set_defaults(handler=run)
    actions = db.add_subparsers(dest="action", required=True)
    actions.add_parser("upgrade", help="migrate to the newest schema")
    downgrade = actions.add_parser("downgrade", help="migrate down to REVISION ('base' drops all)")
    downgrade.add_argument("revision")
    actions.add_parser("current", help="print the schema revision")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from node.db.engine import build_engine, current_revision, downgrade, upgrade

    engine = build_engine(settings.database.url)
    if args.action == "upgrade":
        upgrade(engine)
    elif args.action == "downgrade":
        downgrade(engine, args.revision)
    print(f"schema revision: {current_revision(engine) or 'none'}")
    return EXIT_OK
