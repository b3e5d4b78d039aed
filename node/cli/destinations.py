"""``lacuna destinations`` (where results go, and whether they answer) and ``lacuna
deliveries`` (what was sent where, and dead letters sent again)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from node.config import Settings
from node.console import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, format_table


def register(commands: Any) -> None:
    parser = commands.add_parser("destinations", help="where results go")
    parser.set_defaults(handler=destinations)
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="the configured destinations")
    echo = actions.add_parser(
        "echo", help="C-ECHO (or, for STOW-RS, a QIDO-RS probe) a destination (all if none named)")
    echo.add_argument("name", nargs="?")

    parser = commands.add_parser("deliveries", help="result deliveries per object and destination")
    parser.set_defaults(handler=deliveries)
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the newest deliveries")
    listing.add_argument("--state", choices=["pending", "delivered", "dead"])
    listing.add_argument("--destination")
    listing.add_argument("--limit", type=int, default=50)
    retry = actions.add_parser(
        "retry", help="send dead-lettered deliveries again (all, or those named)")
    retry.add_argument("ids", nargs="*", type=int, metavar="ID")
    retry.add_argument("--destination")


def destinations(args: argparse.Namespace, settings: Settings) -> int:
    configured = settings.destinations
    if args.action == "list":
        if args.json:
            print(json.dumps([vars(d) for d in configured], indent=2))
        else:
            print(format_table(["name", "protocol", "objects", "address"],
                               [[d.name, d.protocol, ",".join(d.objects), d.address]
                                for d in configured]))
        return EXIT_OK
    from node.dicom.dicomweb import probe
    from node.dicom.scu import echo

    chosen = [d for d in configured if args.name in (None, d.name)]
    if not chosen:
        print(f"lacuna: no destination named {args.name!r} (see `lacuna destinations list`)",
              file=sys.stderr)
        return EXIT_USAGE
    answers = [(d, probe(d) if d.url else echo(d, settings.scp.ae_title)) for d in chosen]
    if args.json:
        print(json.dumps([{"name": d.name, "ok": ok, "detail": detail, "seconds": round(t, 3)}
                          for d, (ok, detail, t) in answers], indent=2))
    else:
        print(format_table(["name", "result", "ms", "detail"],
                           [[d.name, "ok" if ok else "FAILED", f"{1000 * t:.0f}", detail]
                            for d, (ok, detail, t) in answers]))
    return EXIT_OK if all(ok for _, (ok, _, _) in answers) else EXIT_FAILURE


def deliveries(args: argparse.Namespace, settings: Settings) -> int:
    from node.app import open_database
    from node.services import audit
    from node.services.export import recent_deliveries, requeue_dead

    database = open_database(settings)
    with database.sessions.begin() as session:
        if args.action == "retry":
            requeued = requeue_dead(session, args.ids or None, args.destination,
                                    audit.admin_actor(), datetime.now(UTC))
            if args.json:
                print(json.dumps({"requeued": requeued}))
            else:
                print(f"{len(requeued)} dead-lettered deliver{'y' if len(requeued) == 1 else 'ies'} "
                      f"queued again{': ' + ', '.join(map(str, requeued)) if requeued else ''}")
            return EXIT_OK if requeued or not args.ids else EXIT_FAILURE
        rows = recent_deliveries(session, args.state, args.destination, args.limit)
        if args.json:
            print(json.dumps([{"id": d.id, "job_id": r.job_id, "kind": r.kind, "state": d.state,
                               "destination": d.destination, "attempts": d.attempts,
                               "status": d.status, "error": d.error,
                               "updated_at": d.updated_at.isoformat(),
                               "next_attempt_at": (d.next_attempt_at.isoformat()
                                                   if d.next_attempt_at else None),
                               "sop_instance_uid": r.sop_instance_uid} for d, r in rows], indent=2))
            return EXIT_OK
        print(format_table(
            ["id", "job", "kind", "destination", "state", "tries", "updated (UTC)", "error"],
            [[d.id, r.job_id, r.kind, d.destination, d.state, d.attempts,
              f"{d.updated_at:%Y-%m-%d %H:%M:%S}", d.error or ""] for d, r in rows]))
        return EXIT_OK
