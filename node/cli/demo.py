"""``lacuna demo``: one round trip on this machine, a synthetic study in, SEG + SR out."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from node.config import Settings


def register(commands: Any) -> None:
    demo = commands.add_parser("demo", help="round trip: synthetic study in, SEG + SR out")
    demo.set_defaults(handler=run)
    demo.add_argument("--workdir", type=Path, default=Path("var/demo"))
    demo.add_argument("--seed", type=int, default=2026)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from node.demo import run_demo

    return run_demo(args.workdir.resolve(), args.seed, settings.models)
