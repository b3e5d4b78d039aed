"""``lacuna render``: a PNG montage of a study's slices with its lesions outlined."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from node.config import Settings
from node.console import EXIT_OK


def register(commands: Any) -> None:
    render = commands.add_parser(
        "render", help="PNG montage of a study's slices with lesions, outlined by class")
    render.set_defaults(handler=run)
    render.add_argument("study_instance_uid")
    render.add_argument("out", type=Path)
    render.add_argument("--job", type=int, help="this job's result (default: the newest)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from node.app import open_database
    from node.services.rendering import render_study

    database = open_database(settings)
    out = render_study(database.sessions, settings.storage.root, args.study_instance_uid,
                       args.out, args.job)
    print(out)
    return EXIT_OK
