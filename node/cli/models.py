"""``lacuna models``: register, verify, activate, roll back, shadow and compare versions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from node.config import Settings
from node.console import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, format_table
from node.errors import ModelError


def register(commands: Any) -> None:
    parser = commands.add_parser("models", help="model versions")
    parser.set_defaults(handler=run)
    models = parser.add_subparsers(dest="action", required=True)
    models.add_parser("list", help="registered versions; * active, ~ shadow; the bundled "
                                   "synthetic-trained model is marked")
    show_model = models.add_parser("show", help="one version: manifest, files, jobs run")
    show_model.add_argument("name")
    show_model.add_argument("version")
    package = models.add_parser(
        "register", help="verify a package's files, load it, smoke-test it, record it")
    package.add_argument("package", type=Path)
    activate = models.add_parser("activate", help="make NAME VERSION the active model")
    activate.add_argument("name")
    activate.add_argument("version")
    models.add_parser("rollback", help="re-activate the previously active version")
    models.add_parser("verify", help="re-check the files of every registered version")
    shadow = models.add_parser(
        "shadow", help="run NAME VERSION beside the active one (never exported); --stop ends it")
    shadow.add_argument("name", nargs="?")
    shadow.add_argument("version", nargs="?")
    shadow.add_argument("--stop", action="store_true")
    compare = models.add_parser(
        "compare", help="agreement of a shadow version with the clinical results")
    compare.add_argument("name", nargs="?", help="default: the current shadow version")
    compare.add_argument("version", nargs="?")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from node.app import open_database
    from node.services import registry

    database = open_database(settings)
    if args.action == "compare":
        return _compare(args, settings, database)
    with database.sessions.begin() as session:
        if args.action == "list":
            return _list(args, settings, session)
        if args.action == "show":
            return _show(session, registry.find_version(session, args.name, args.version),
                         args.json)
        if args.action == "verify":
            return _verify(args, session)
        return _change(args, settings, session)


def _list(args: argparse.Namespace, settings: Settings, session: Any) -> int:
    from node.services import registry

    versions = registry.list_versions(session)
    bundled = {v.id for v in versions
               if registry.is_bundled(v, registry.bundled_package(settings.models))}
    if args.json:
        print(json.dumps([{**_version_json(v), "bundled_synthetic": v.id in bundled}
                          for v in versions], indent=2))
        return EXIT_OK
    print(format_table(
        ["", "name", "version", "registered (UTC)", "activated (UTC)", "note", "path"],
        [["*" if v.active else "~" if v.shadow else "", v.name, v.version,
          f"{v.registered_at:%Y-%m-%d %H:%M}",
          f"{v.activated_at:%Y-%m-%d %H:%M}" if v.activated_at else "",
          "BUNDLED, synthetic-trained: not for clinical use" if v.id in bundled else "", v.path]
         for v in versions]))
    return EXIT_OK


def _verify(args: argparse.Namespace, session: Any) -> int:
    from node.services import audit, registry

    results = registry.verify_all(session, audit.admin_actor())
    if args.json:
        print(json.dumps([vars(r) for r in results], indent=2))
    else:
        print(format_table(["name", "version", "files", "detail"],
                           [[r.name, r.version, "ok" if r.ok else "FAILED", r.detail]
                            for r in results]))
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILURE


def _change(args: argparse.Namespace, settings: Settings, session: Any) -> int:
    """register, activate, shadow or rollback; prints the version changed."""
    from node.services import audit, registry

    actor = audit.admin_actor()
    if args.action == "register":
        from models.smoke import smoke_test_package  # loads TensorFlow

        version = registry.register(session, args.package, actor, smoke_test_package,
                                    store=settings.storage.model_store)
    elif args.action == "activate":
        version = registry.activate(session, args.name, args.version, actor)
    elif args.action == "shadow":
        if args.stop:
            version = registry.stop_shadow(session, actor)
        elif args.name and args.version:
            version = registry.start_shadow(session, args.name, args.version, actor)
        else:
            print("lacuna: models shadow needs NAME VERSION, or --stop", file=sys.stderr)
            return EXIT_USAGE
    else:
        version = registry.rollback(session, actor)
    state = " (active)" if version.active else " (shadow)" if version.shadow else ""
    if args.json:
        print(json.dumps({"action": args.action, **_version_json(version)}))
    else:
        print(f"{args.action}: {version.name} {version.version}{state}")
    return EXIT_OK


def _version_json(version: Any) -> dict[str, Any]:
    return {
        "name": version.name, "version": version.version, "active": version.active,
        "shadow": version.shadow, "path": version.path,
        "manifest_sha256": version.manifest_sha256,
        "registered_at": version.registered_at.isoformat(),
        "activated_at": version.activated_at.isoformat() if version.activated_at else None,
    }


def _show(session: Any, version: Any, as_json: bool) -> int:
    from node.services import registry

    manifest = version.manifest
    shown = {**_version_json(version), "jobs_by_state": registry.jobs_by_state(session, version),
             "trained_on": manifest.get("trained_on"),
             "intended_use": manifest.get("intended_use"),
             "metrics": manifest.get("metrics", {}), "files": manifest.get("files", {}),
             "input_matrix": manifest.get("input_matrix"),
             "thresholds": {key: manifest.get(key) for key in
                            ("lesion_threshold", "outline_threshold", "laci_threshold",
                             "min_lesion_voxels")}}
    if as_json:
        print(json.dumps(shown, indent=2, default=str))
        return EXIT_OK
    for key, value in shown.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for inner, inner_value in value.items():
                print(f"  {inner}: {inner_value}")
        else:
            print(f"{key}: {value}")
    return EXIT_OK


def _compare(args: argparse.Namespace, settings: Settings, database: Any) -> int:
    from node.services import registry, shadow

    with database.sessions.begin() as session:
        candidate = (registry.find_version(session, args.name, args.version)
                     if args.name and args.version else registry.shadow_version(session))
        if candidate is None:
            raise ModelError("no model version is in shadow mode: name one to compare")
        comparison = shadow.compare(session, settings.storage.root, candidate)
    summary = {
        "candidate": comparison.candidate, "studies_compared": len(comparison.studies),
        "pending": comparison.pending,
        "mean_dice": _rounded(comparison.mean_dice), "median_dice": _rounded(comparison.median_dice),
        "same_lesion_counts": _rounded(comparison.count_agreement),
    }
    if args.json:
        print(json.dumps({**summary, "studies": [
            {"study_instance_uid": s.study_instance_uid, "clinical_job": s.clinical_job_id,
             "shadow_job": s.shadow_job_id, "clinical_model": s.clinical_model,
             "clinical": s.clinical_findings, "shadow": s.shadow_findings,
             "dice": round(s.dice, 4)} for s in comparison.studies]}, indent=2))
        return EXIT_OK
    print(format_table(
        ["study", "clinical model", "clinical FCI/LACI/unclassified", "shadow FCI/LACI/unclassified",
         "dice"],
        [[s.study_instance_uid, s.clinical_model, _counts(s.clinical_findings),
          _counts(s.shadow_findings), f"{s.dice:.3f}"] for s in comparison.studies]))
    print(" ".join(f"{key}={value}" for key, value in summary.items()))
    return EXIT_OK


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _counts(findings: dict[str, int]) -> str:
    return "/".join(str(findings.get(key, 0)) for key in ("FCI", "LACI", "UNCLASSIFIED"))

