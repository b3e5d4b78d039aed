"""``lacuna jobs``: list, show, retry and cancel processing jobs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from node.config import Settings
from node.console import EXIT_OK, format_table


def register(commands: Any) -> None:
    parser = commands.add_parser("jobs", help="processing jobs")
    parser.set_defaults(handler=run)
    jobs = parser.add_subparsers(dest="action", required=True)
    jobs_list = jobs.add_parser("list")
    jobs_list.add_argument("--limit", type=int, default=50)
    show = jobs.add_parser("show")
    show.add_argument("job_id", type=int)
    retry = jobs.add_parser("retry", help="queue a failed or cancelled job again")
    retry.add_argument("job_id", type=int)
    cancel = jobs.add_parser("cancel", help="cancel a queued or failed job")
    cancel.add_argument("job_id", type=int)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from node.app import open_database
    from node.services import audit
    from node.services.job_admin import cancel_job, retry_job

    database = open_database(settings)
    with database.sessions.begin() as session:
        if args.action in ("retry", "cancel"):
            act = retry_job if args.action == "retry" else cancel_job
            job = act(session, args.job_id, audit.admin_actor())
            print(f"job {job.id}: {job.state}")
            return EXIT_OK
        if args.action == "list":
            return _list(args, session)
        return _show(args, session)


def _list(args: argparse.Namespace, session: Any) -> int:
    from node.services.job_admin import recent_jobs

    rows = recent_jobs(session, args.limit)
    if args.json:
        print(json.dumps([{"id": job.id, "state": job.state, "run": job.run,
                           "priority": job.priority, "shadow": job.shadow,
                           "created_at": job.created_at.isoformat(),
                           "model_version": f"{name} {version}",
                           "study_instance_uid": study_uid}
                          for job, study_uid, name, version in rows], indent=2))
        return EXIT_OK
    print(format_table(
        ["id", "state", "created (UTC)", "run", "prio", "model", "study"],
        [[job.id, job.state + (" (shadow)" if job.shadow else ""),
          f"{job.created_at:%Y-%m-%d %H:%M:%S}", job.run, job.priority,
          f"{name} {version}", study_uid] for job, study_uid, name, version in rows]))
    return EXIT_OK


def _show(args: argparse.Namespace, session: Any) -> int:
    from node.services.job_admin import job_with_results

    shown, results = job_with_results(session, args.job_id)
    print(json.dumps({
        "id": shown.id, "state": shown.state, "attempts": shown.attempts,
        "created_at": shown.created_at.isoformat(),
        "started_at": shown.started_at.isoformat() if shown.started_at else None,
        "finished_at": shown.finished_at.isoformat() if shown.finished_at else None,
        "error": shown.error, "timings_s": shown.timings, "findings": shown.findings,
        "shadow": shown.shadow, "model_version_id": shown.model_version_id,
        "results": [{"kind": r.kind, "sop_instance_uid": r.sop_instance_uid,
                     "path": r.path} for r in results],
    }, indent=2))
    return EXIT_OK
