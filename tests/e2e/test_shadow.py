"""Shadow mode on a live study: the candidate runs beside the active version, its results are
kept but never sent, `models compare` reports the agreement, and activation promotes it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from models.package import default_package_dir
from node.app import EmbeddedNode
from node.cli import EXIT_OK, main
from node.db.tables import AuditEvent, Delivery, Job, ResultObject
from node.domain.jobs import JobState
from node.domain.priority import SHADOW
from node.services import registry
from tests.conftest import wait_for
from tests.e2e.conftest import Pacs, storescu

pytestmark = pytest.mark.e2e


def test_a_shadow_version_runs_beside_the_active_one_and_is_never_exported(
    node: EmbeddedNode, pacs: Pacs, synthetic_study, tmp_path: Path,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    candidate_dir = tmp_path / "candidate"
    shutil.copytree(default_package_dir(), candidate_dir)
    manifest_path = candidate_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["version"] = "candidate-" + manifest["version"]
    manifest_path.write_text(json.dumps(manifest))
    sessions = node.database.sessions
    with sessions.begin() as session:
        candidate = registry.register(session, candidate_dir, "admin:test")
        registry.start_shadow(session, candidate.name, candidate.version, "admin:test")

    assert storescu(node.port, synthetic_study.folder).returncode == 0

    def both_done() -> list[Job] | None:
        with sessions.begin() as session:
            jobs = list(session.scalars(select(Job).order_by(Job.id)))
        return jobs if len(jobs) == 2 and all(j.state == JobState.DONE for j in jobs) else None

    clinical, shadow = wait_for(both_done, timeout_s=300)
    assert (clinical.shadow, shadow.shadow) == (False, True)
    assert shadow.priority == SHADOW and shadow.model_version_id == candidate.id
    assert clinical.findings and clinical.findings == shadow.findings  # same weights

    with sessions.begin() as session:
        kinds = {job_id: sorted(session.scalars(
            select(ResultObject.kind).where(ResultObject.job_id == job_id)))
            for job_id in (clinical.id, shadow.id)}
        delivered_jobs = set(session.scalars(
            select(ResultObject.job_id).join(Delivery, Delivery.result_object_id == ResultObject.id)))
    assert kinds == {clinical.id: ["SEG", "SR"], shadow.id: ["SEG", "SR"]}  # kept for comparing
    assert delivered_jobs == {clinical.id}  # only the clinical results left the node
    received = pacs.received()
    assert len(received["SEG"]) == 1 and len(received["SR"]) == 1

    monkeypatch.setenv("LACUNA_DATABASE_URL", node.settings.database.url)
    monkeypatch.setenv("LACUNA_STORAGE_ROOT", str(node.settings.storage.root))
    assert main(["--json", "models", "compare"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["studies_compared"] == 1 and report["pending"] == 0
    assert report["mean_dice"] == 1.0 and report["same_lesion_counts"] == 1.0

    assert main(["models", "activate", candidate.name, candidate.version]) == EXIT_OK
    with sessions.begin() as session:
        promoted = registry.active_version(session)
        assert promoted is not None and promoted.id == candidate.id and not promoted.shadow
        assert registry.shadow_version(session) is None
        actions = list(session.scalars(select(AuditEvent.action).where(
            AuditEvent.action.like("model.%")).order_by(AuditEvent.id)))
    # Registered here without a smoke test, the candidate had one when a worker first loaded it.
    assert "model.smoke_tested" in actions[actions.index("model.shadow_started"):]
    assert [a for a in actions if a != "model.smoke_tested"][-3:] == [
        "model.registered", "model.shadow_started", "model.activated"]
