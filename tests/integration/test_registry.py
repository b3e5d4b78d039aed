import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from sqlalchemy import Engine, select

from models.package import default_package_dir
from node.config import WorkerSettings
from node.db.engine import SessionFactory, build_engine, session_factory, upgrade
from node.db.tables import AuditEvent, Instance, Job, ResultObject, Series
from node.domain.jobs import JobState
from node.domain.lesions import LesionClass, LesionSegmentation
from node.domain.series import SeriesRole
from node.errors import ModelError
from node.services import audit, registry
from node.services.processing import EngineCache, JobInputs, Processor, RunReport
from node.services.worker import Worker
from tests.integration.test_queue import add_study
from tests.integration.test_results import truth_segmentation
from training.phantom import Contrast
from training.synth import SyntheticStudy


def copy_package(tmp_path: Path, version: str) -> Path:
    target = tmp_path / version
    shutil.copytree(default_package_dir(), target)
    manifest = target / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"version": "', f'"version": "{version}-', 1))
    return target


def test_register_activate_rollback(engine: Engine, tmp_path: Path) -> None:
    upgrade(engine)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        first = registry.ensure_default(session, default_package_dir())
        assert first is not None and first.active
        second = registry.register(session, copy_package(tmp_path, "b"), "admin:test")
        assert not second.active
        registry.activate(session, second.name, second.version, "admin:test")
    with sessions.begin() as session:
        assert registry.active_version(session).version == second.version  # type: ignore[union-attr]
        registry.rollback(session, "admin:test")
    with sessions.begin() as session:
        active = registry.active_version(session)
        assert active is not None and active.version == first.version
        actions = list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))
        assert actions == ["model.registered", "model.activated", "model.registered",
                           "model.activated", "model.rolled_back"]
        actors = set(session.scalars(select(AuditEvent.actor)))
        assert "admin:test" in actors


def test_tampered_package_is_refused(engine: Engine, tmp_path: Path) -> None:
    upgrade(engine)
    package = copy_package(tmp_path, "t")
    with (package / "secondary.keras").open("ab") as stream:
        stream.write(b"tampered")
    with session_factory(engine).begin() as session, pytest.raises(ModelError, match="sha256"):
        registry.register(session, package, "admin:test")


def queued_job_on_files(sessions: SessionFactory, root: Path, study: SyntheticStudy,
                        version_id: int) -> int:
    """``study``'s T2 FLAIR files under ``root``, indexed as one series with its role, and a
    queued job of ``version_id`` on it; returns the job's id."""
    t2 = study.series[Contrast.T2_FLAIR]
    now = datetime.now(UTC)
    with sessions.begin() as session:
        row = add_study(session, study.study_instance_uid, now, None)
        series = Series(series_instance_uid=str(dcmread(t2[0]).SeriesInstanceUID),
                        study_id=row.id, modality="MR", series_number=1, series_description="",
                        attributes={}, role=SeriesRole.T2_FLAIR)
        session.add(series)
        session.flush()
        for n, source in enumerate(t2):
            target = root / "instances" / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            session.add(Instance(sop_instance_uid=f"1.2.3.{n}", series_id=series.id,
                                 sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                                 transfer_syntax_uid="1.2.840.10008.1.2.1", instance_number=n,
                                 path=str(target.relative_to(root)), size_bytes=1, sha256="0" * 64,
                                 received_at=now))
        job = Job(study_id=row.id, model_version_id=version_id, state=JobState.QUEUED,
                  attempts=0, created_at=now)
        session.add(job)
        session.flush()
        return job.id


def _edit_threshold(package: Path) -> None:
    manifest = package / "manifest.json"
    manifest.chmod(0o644)
    data = json.loads(manifest.read_text())
    data["lesion_threshold"] = 0.05  # what an operator might "just try"
    manifest.write_text(json.dumps(data))


def test_the_model_that_runs_is_the_model_that_was_registered(
    engine: Engine, tmp_path: Path, synthetic_study  # type: ignore[no-untyped-def]
) -> None:
    upgrade(engine)
    sessions = session_factory(engine)
    package, store, root = copy_package(tmp_path, "s"), tmp_path / "store", tmp_path / "storage"
    with sessions.begin() as session:
        version = registry.register(session, package, "admin:test", store=store)
        registry.activate(session, version.name, version.version, "admin:test")
        path, sha256, version_id = Path(version.path), version.manifest_sha256, version.id
    # Registration copied the package into the content-addressed store, and runs it from there.
    assert path == store.resolve() / sha256
    assert sorted(p.name for p in path.iterdir()) == sorted(p.name for p in package.iterdir())

    # Editing the package that was registered changes nothing that runs.
    _edit_threshold(package)
    registry.verify_registered(path, sha256)

    # Editing the stored copy is caught when a job loads it: the job fails, audited, and
    # `models verify` says so.
    _edit_threshold(path)
    with pytest.raises(ModelError, match="manifest changed since registration"):
        EngineCache().get(version_id, path, sha256)
    job_id = queued_job_on_files(sessions, root, synthetic_study, version_id)

    class NoExport:
        def enqueue(self, job_id: int) -> int:
            raise AssertionError("a job on a tampered model exports nothing")

    worker = Worker(sessions, Processor(sessions, root, EngineCache()), NoExport(),  # type: ignore[arg-type]
                    WorkerSettings(), owner="worker-a")
    worker.run_once()
    with sessions.begin() as session:
        failed = session.get(Job, job_id)
        assert failed is not None and failed.state == JobState.FAILED
        assert "not the package that was registered" in (failed.error or "")
        assert session.scalar(select(ResultObject.id)) is None
        [event] = session.scalars(select(AuditEvent).where(AuditEvent.action == "job.failed"))
        assert "manifest changed since registration" in event.details["reason"]
        [checked] = registry.verify_all(session, "admin:test")
        assert not checked.ok and "manifest changed" in checked.detail


@dataclass
class TruthRun:
    """A study's T2 FLAIR indexed under ``root`` with a queued job (``job_id``) of the bundled
    model, whose networks' place an engine that returns the study's own lesions takes."""

    sessions: SessionFactory
    root: Path
    version_id: int
    job_id: int
    truth: LesionSegmentation
    engines: EngineCache


def truth_run(engine: Engine, tmp_path: Path, study: SyntheticStudy) -> TruthRun:
    upgrade(engine)
    sessions = session_factory(engine)
    root = tmp_path / "storage"
    with sessions.begin() as session:
        version = registry.ensure_default(session, default_package_dir())
        assert version is not None
        version_id = version.id
        # The truth engine stands in for the networks: there is nothing to smoke-test.
        audit.record(session, "model.smoke_tested", model_version=f"{version.name} "
                     f"{version.version}", passed=True, detail="test: the truth engine")
    job_id = queued_job_on_files(sessions, root, study, version_id)
    truth = truth_segmentation(np.load(study.folder / "labels.npy"),
                               {1: LesionClass.FCI, 2: LesionClass.LACI})

    class TruthEngine:
        def segment(self, *args: object) -> LesionSegmentation:
            return truth

    return TruthRun(sessions, root, version_id, job_id, truth,
                    EngineCache({version_id: TruthEngine()}))  # type: ignore[dict-item]


class NoDelivery:
    def enqueue(self, job_id: int) -> int:
        return 0

    def deliver_due(self, job_id: int | None = None) -> int:
        return 0


def test_a_job_whose_results_were_built_before_a_release_keeps_its_findings(
    engine: Engine, tmp_path: Path, synthetic_study  # type: ignore[no-untyped-def]
) -> None:
    run = truth_run(engine, tmp_path, synthetic_study)
    sessions, truth = run.sessions, run.truth
    workers: list[Worker] = []

    class ReleasedAfterBuilding(Processor):
        def run(self, job_id: int, inputs: JobInputs, owner: str) -> RunReport:
            report = super().run(job_id, inputs, owner)  # results and findings stored
            workers[0].release_current("shutdown: test")  # then SIGTERM, before it finishes
            return report

    workers.append(Worker(sessions, ReleasedAfterBuilding(sessions, run.root, run.engines),
                          NoDelivery(), WorkerSettings(), owner="worker-a"))  # type: ignore[arg-type]
    workers[0].run_once()
    retry = Worker(sessions, Processor(sessions, run.root, run.engines), NoDelivery(),  # type: ignore[arg-type]
                   WorkerSettings(), owner="worker-b")
    report = retry.run_once()  # reuses the stored results
    assert report is not None and report.lesions is None and report.findings is not None
    expected = {"FCI": sum(lesion.lesion_class is LesionClass.FCI for lesion in truth.lesions),
                "LACI": sum(lesion.lesion_class is LesionClass.LACI for lesion in truth.lesions),
                "UNCLASSIFIED": 0}
    with sessions.begin() as session:
        job = session.get(Job, run.job_id)
        assert job is not None and job.state == JobState.DONE
        assert job.findings == expected
        finished = session.scalars(select(AuditEvent.details)
                                   .where(AuditEvent.action == "job.finished")).one()
        actions = list(session.scalars(select(AuditEvent.action)
                                       .where(AuditEvent.job_id == run.job_id)
                                       .order_by(AuditEvent.id)))
    assert finished["lesions"] == len(truth.lesions)
    assert "job.lease_lost" not in actions and actions.count("job.released") == 1


def test_a_package_registered_without_a_smoke_test_gets_one_when_first_loaded(
    tmp_path: Path,
) -> None:
    engine = build_engine(f"sqlite:///{tmp_path / 'lacuna.db'}")  # loads networks: one backend
    upgrade(engine)
    sessions = session_factory(engine)
    with sessions.begin() as session:  # first start: the bundled package, no smoke test
        bundled = registry.ensure_default(session, default_package_dir())
        assert bundled is not None
    processor = Processor(sessions, tmp_path, EngineCache())
    processor.preload()
    processor.preload()  # once per version, not per load
    with sessions.begin() as session:
        [tested] = session.scalars(select(AuditEvent.details)
                                   .where(AuditEvent.action == "model.smoke_tested"))
    assert tested["passed"] is True and "both planted lesions found" in tested["detail"]
    assert processor.active_model_loaded() is not None

    # A package that cannot find the planted lesions is not run: jobs fail, /ready says why.
    blind = copy_package(tmp_path, "blind")
    manifest = blind / "manifest.json"
    data = json.loads(manifest.read_text())
    data["lesion_threshold"] = 1.01  # no probability reaches it
    manifest.write_text(json.dumps(data))
    with sessions.begin() as session:
        version = registry.register(session, blind, "admin:test")  # no smoke test given
        registry.activate(session, version.name, version.version, "admin:test")
    with pytest.raises(ModelError, match="failed its smoke test"):
        processor.preload()
    assert processor.active_model_loaded() is None
    with sessions.begin() as session:
        outcomes = list(session.scalars(select(AuditEvent.details)
                                        .where(AuditEvent.action == "model.smoke_tested")
                                        .order_by(AuditEvent.id)))
    assert [o["passed"] for o in outcomes] == [True, False]
