"""``lacuna audit``: list, export and verify the hash-chained audit trail."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from node.config import Settings
from node.console import EXIT_FAILURE, EXIT_OK, format_table, timestamp


def register(commands: Any) -> None:
    parser = commands.add_parser("audit", help="the audit trail")
    parser.set_defaults(handler=run)
    audit = parser.add_subparsers(dest="action", required=True)
    for name, help_text in (("list", "the newest events, oldest first"),
                            ("export", "events as JSON lines (all by default)")):
        selection = audit.add_parser(name, help=help_text)
        selection.add_argument("--study", help="StudyInstanceUID")
        selection.add_argument("--ae", help="calling AE title")
        selection.add_argument("--action", dest="event_action", help="e.g. job.finished")
        selection.add_argument("--job", type=int)
        selection.add_argument("--since", type=timestamp, help="ISO time, UTC if no zone")
        selection.add_argument("--until", type=timestamp, help="ISO time, UTC if no zone")
        selection.add_argument("--limit", type=int, default=100 if name == "list" else None)
        if name == "export":
            selection.add_argument("--out", type=Path, help="file to write (default stdout)")
    audit.add_parser("verify", help="check the hash chain; exit 1 and name the broken rows")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from node.app import open_database
    from node.services import audit

    database = open_database(settings)
    if args.action == "verify":
        return _verify(args, database)
    selection = audit.EventFilter(study_instance_uid=args.study, calling_ae=args.ae,
                                  action=args.event_action, job_id=args.job, since=args.since,
                                  until=args.until, limit=args.limit)
    with database.sessions.begin() as session:
        events = audit.find_events(session, selection)
    if args.action == "export" or args.json:
        out = args.out.open("w", encoding="utf-8") if getattr(args, "out", None) else sys.stdout
        try:
            for event in events:
                out.write(json.dumps(_event_json(event), default=str) + "\n")
        finally:
            if out is not sys.stdout:
                out.close()
        return EXIT_OK
    print(format_table(
        ["id", "time (UTC)", "action", "actor", "where", "details"],
        [[event.id, f"{event.occurred_at:%Y-%m-%d %H:%M:%S}", event.action, event.actor,
          " ".join(f"{k}={v}" for k, v in (
              ("ae", event.calling_ae), ("study", event.study_instance_uid),
              ("sop", event.sop_instance_uid), ("job", event.job_id),
              ("model", event.model_version)) if v),
          json.dumps(event.details, default=str)] for event in events],
    ))
    return EXIT_OK


def _verify(args: argparse.Namespace, database: Any) -> int:
    from node.services import audit

    with database.sessions.begin() as session:
        checked, breaks = audit.verify(session)
    if args.json:
        print(json.dumps({"checked": checked, "intact": not breaks,
                          "breaks": [{"event_id": b.event_id, "seq": b.seq,
                                      "problem": b.problem} for b in breaks]}))
    else:
        for problem in breaks:
            print(f"BROKEN {problem}")
        print(f"{checked} event(s) checked: "
              f"{'chain intact' if not breaks else f'{len(breaks)} break(s)'}")
    return EXIT_OK if not breaks else EXIT_FAILURE


def _event_json(event: Any) -> dict[str, Any]:
    return {
        "id": event.id, "seq": event.chain_seq, "occurred_at": event.occurred_at.isoformat(),
        "action": event.action, "actor": event.actor, "calling_ae": event.calling_ae,
        "peer_address": event.peer_address, "study_instance_uid": event.study_instance_uid,
        "series_instance_uid": event.series_instance_uid,
        "sop_instance_uid": event.sop_instance_uid, "job_id": event.job_id,
        "model_version": event.model_version, "details": event.details,
        "prev_hash": event.prev_hash, "hash": event.hash,
    }

