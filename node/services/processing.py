"""Processing of one claimed job: read the study's FLAIR series, run the two-stage engine,
build the SEG and SR, store them and record them. Timings are in seconds."""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.inference import TwoStageEngine
from node.db.engine import SessionFactory
from node.db.jobs import require_lease
from node.db.tables import Instance, Job, ModelVersion, ResultObject, Series, Study, utcnow
from node.dicom.storage import relative_path, write_atomically
from node.domain.lesions import LesionClass, LesionSegmentation
from node.domain.series import SeriesRole
from node.errors import ModelError, NotProcessable
from node.results.fallbacks import build_key_images, build_presentation_state, shown_slices
from node.results.identity import ModelIdentity, NodeIdentity
from node.results.seg import build_segmentation, new_tracking_uids, segment_numbers
from node.results.sr import build_report
from node.results.supersede import build_rejection_note, carried_tracking_uids
from node.services import audit, registry
from node.services.node_identity import node_identity
from node.services.volumes import StudyVolumes, load_study_volumes

logger = logging.getLogger(__name__)


class EngineCache:
    """Loads each model version's networks once per process, after checking that the files
    are the ones registered (:func:`registry.verify_registered`; else :class:`ModelError`,
    and the job fails with the reason)."""

    def __init__(self, loaded: dict[int, TwoStageEngine] | None = None) -> None:
        """``loaded``: engines already in hand, by version id (used as they are, unchecked)."""
        self._engines: dict[int, TwoStageEngine] = dict(loaded or {})
        self._lock = threading.Lock()

    def holds(self, version_id: int) -> bool:
        with self._lock:
            return version_id in self._engines

    def get(self, version_id: int, package_dir: Path, manifest_sha256: str) -> TwoStageEngine:
        with self._lock:
            if version_id not in self._engines:
                registry.verify_registered(package_dir, manifest_sha256)
                self._engines[version_id] = TwoStageEngine.load(package_dir)
            return self._engines[version_id]


@dataclass
class RunReport:
    """What one run produced, for the job row, the demo and bench/."""

    lesions: LesionSegmentation | None = None
    # Lesions by class ({"FCI": n, "LACI": m, "UNCLASSIFIED": k}), stored with the results.
    findings: dict[str, int] | None = None
    result_paths: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class JobInputs:
    study_instance_uid: str
    t2_paths: list[Path]
    t1_paths: list[Path]
    model_version_id: int
    model_path: Path
    model: ModelIdentity
    node: NodeIdentity
    supersedes: str | None = None  # for a re-run after late arrivals: what it replaces, and why
    # The results of the run this one replaces, as (kind, file): withdrawn by this run.
    superseded: tuple[tuple[str, Path], ...] = ()


def _superseded_objects(session: Session, root: Path, job: Job) -> tuple[tuple[str, Path], ...]:
    """The result objects of the run ``job`` replaces (its rejection notes excluded)."""
    if job.supersedes_job_id is None:
        return ()
    rows = session.execute(
        select(ResultObject.kind, ResultObject.path)
        .where(ResultObject.job_id == job.supersedes_job_id, ResultObject.kind != "KOS")
        .order_by(ResultObject.id)).all()
    return tuple((str(kind), root / path) for kind, path in rows)


def _superseded_report(session: Session, job: Job) -> str | None:
    if job.supersedes_job_id is None:
        return None
    earlier = session.get(Job, job.supersedes_job_id)
    sr_uid = session.scalar(
        select(ResultObject.sop_instance_uid)
        .where(ResultObject.job_id == job.supersedes_job_id, ResultObject.kind == "SR")
    )
    run = earlier.run if earlier is not None else job.run - 1
    target = f"run {run} (SR SOP Instance UID {sr_uid})" if sr_uid else f"run {run}"
    return f"{target}; instances arrived after it was queued, and this run read them too."


@dataclass(frozen=True)
class ResultOptions:
    """Which objects a run builds beyond the SEG and SR: ``fallbacks`` holds "GSPS" and/or
    "SC" when some destination receives them; ``rejection_notes``: a re-run withdraws the
    results it replaces with an IOCM rejection note ("KOS") for the destinations that take
    them; ``per_lesion`` gives each lesion its own segment (False: one per class)."""

    fallbacks: frozenset[str] = frozenset()
    rejection_notes: bool = False
    per_lesion: bool = True


class Processor:
    def __init__(self, sessions: SessionFactory, storage_root: Path, engines: EngineCache,
                 options: ResultOptions | None = None) -> None:
        self._sessions = sessions
        self._root = storage_root
        self._engines = engines
        self._options = options or ResultOptions()
        self._smoke_passed: set[int] = set()  # version ids smoke-tested (or not due) here
        self._smoke_failures: dict[int, str] = {}  # version id -> why its smoke test failed

    def _engine(self, version_id: int, package_dir: Path, manifest_sha256: str) -> TwoStageEngine:
        """The version's engine (:class:`EngineCache`), smoke-tested once if registration did
        not (the bundled package): audited as ``model.smoke_tested``; a failure is a
        :class:`ModelError` for every job of that version in this process."""
        engine = self._engines.get(version_id, package_dir, manifest_sha256)
        failure = self._smoke_failures.get(version_id)
        if failure is None and version_id not in self._smoke_passed:
            with self._sessions.begin() as session:
                version = session.get(ModelVersion, version_id)
                due = version is not None and registry.smoke_test_due(session, version)
            if due:
                from models.smoke import smoke_test

                result = smoke_test(engine)
                with self._sessions.begin() as session:
                    version = session.get(ModelVersion, version_id)
                    audit.record(session, "model.smoke_tested",
                                 model_version=None if version is None
                                 else f"{version.name} {version.version}",
                                 passed=result.passed, detail=result.detail)
                if not result.passed:
                    failure = self._smoke_failures[version_id] = result.detail
            if failure is None:
                self._smoke_passed.add(version_id)
        if failure is not None:
            raise ModelError(f"the model failed its smoke test: {failure}")
        return engine

    def preload(self) -> None:
        """Load the active model now rather than on the first study (no-op once loaded)."""
        with self._sessions.begin() as session:
            version = registry.active_version(session)
            if version is None:
                return
            version_id, path, sha256 = version.id, Path(version.path), version.manifest_sha256
        self._engine(version_id, path, sha256)

    def active_model_loaded(self) -> str | None:
        """The active version's label when its networks are loaded in this process."""
        with self._sessions.begin() as session:
            version = registry.active_version(session)
            if (version is None or not self._engines.holds(version.id)
                    or version.id in self._smoke_failures):
                return None
            return f"{version.name} {version.version} loaded"

    def inputs(self, job_id: int) -> JobInputs:
        """The study's FLAIR instances as they are now, and the job's model version."""
        with self._sessions.begin() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotProcessable(f"job {job_id} no longer exists")
            study_id = job.study_id
            study = session.get(Study, study_id)
            version = session.get(ModelVersion, job.model_version_id)
            if study is None or version is None:
                raise NotProcessable("study or model version no longer exists")
            paths: dict[str, list[Path]] = {SeriesRole.T2_FLAIR: [], SeriesRole.T1_FLAIR: []}
            rows = session.execute(
                select(Series.role, Instance.path)
                .join(Instance, Instance.series_id == Series.id)
                .where(Series.study_id == study_id, Series.role.in_(list(paths)))
            ).all()
            for role, path in rows:
                paths[str(role)].append(self._root / path)
            if not paths[SeriesRole.T2_FLAIR]:
                raise NotProcessable("no T2 FLAIR series")
            return JobInputs(
                study_instance_uid=study.study_instance_uid,
                t2_paths=sorted(paths[SeriesRole.T2_FLAIR]),
                t1_paths=sorted(paths[SeriesRole.T1_FLAIR]),
                model_version_id=version.id,
                model_path=Path(version.path),
                model=registry.identity_of(version),
                node=node_identity(session),
                supersedes=_superseded_report(session, job),
                superseded=_superseded_objects(session, self._root, job),
            )

    def stored_results(self, job_id: int) -> RunReport | None:
        """The results an earlier attempt of ``job_id`` built, with their findings, or None."""
        with self._sessions.begin() as session:
            paths = list(session.scalars(
                select(ResultObject.path).where(ResultObject.job_id == job_id)
                .order_by(ResultObject.id)
            ))
            job = session.get(Job, job_id)
            findings = dict(job.findings) if job is not None and job.findings else None
        if not paths:
            return None
        return RunReport(findings=findings, result_paths=[self._root / path for path in paths])

    def _build(self, inputs: JobInputs, volumes: StudyVolumes,
               lesions: LesionSegmentation) -> list[tuple[str, Any]]:
        """The result objects of one run, as (kind, dataset): SEG (when there are lesions), SR,
        and the fallbacks some destination receives."""
        numbers = segment_numbers(lesions, self._options.per_lesion)
        node = inputs.node
        earlier = _read_superseded(inputs.superseded)
        tracking = new_tracking_uids(lesions)
        earlier_seg = next((ds for kind, ds in earlier if kind == "SEG"), None)
        if earlier_seg is not None and lesions.lesions:
            slices = [(str(ds.SOPInstanceUID), frame)
                      for ds, frame in zip(volumes.t2_datasets, volumes.t2_frames, strict=True)]
            try:  # the same lesion keeps its Tracking UID across runs
                tracking.update(carried_tracking_uids(earlier_seg, slices, lesions))
            except Exception:  # new UIDs are correct, only less helpful
                logger.warning("could not match lesions with the earlier run's", exc_info=True)
        objects: list[tuple[str, Any]] = []
        segmentation = None
        if lesions.lesions:
            segmentation = build_segmentation(
                volumes.t2_datasets, lesions, inputs.model,
                series_instance_uid=str(generate_uid()), sop_instance_uid=str(generate_uid()),
                source_frames=volumes.t2_frames, per_lesion=self._options.per_lesion,
                node=node, tracking_uids=tracking,
            )
            objects.append(("SEG", segmentation))
        objects.append(("SR", build_report(
            evidence=volumes.t2_instances + volumes.t1_instances,
            lesions=lesions.lesions,
            segmentation=segmentation,
            segment_numbers=numbers,
            source_series_uid=str(volumes.t2_datasets[0].SeriesInstanceUID),
            model=inputs.model,
            t1_missing_reason=volumes.t1_missing_reason,
            series_instance_uid=str(generate_uid()),
            sop_instance_uid=str(generate_uid()),
            supersedes=inputs.supersedes,
            tracking_uids=tracking,
            source_slices=list(zip(volumes.t2_datasets, volumes.t2_frames, strict=True)),
            node=node,
            previous_versions=[ds for kind, ds in earlier if kind == "SR"],
        )))
        if "GSPS" in self._options.fallbacks:
            objects.append(("GSPS", build_presentation_state(
                volumes.t2_datasets, volumes.t2, lesions, inputs.model, str(generate_uid()),
                str(generate_uid()), volumes.t2_frames, tracking, node=node)))
        if "SC" in self._options.fallbacks:
            series_uid = str(generate_uid())
            images = build_key_images(
                volumes.t2_datasets, volumes.t2, lesions, inputs.model, series_uid,
                [str(generate_uid()) for _ in shown_slices(lesions)], volumes.t2_frames,
                node=node)
            objects.extend(("SC", image) for image in images)
        if self._options.rejection_notes and earlier:
            objects.append(("KOS", build_rejection_note(
                [ds for _, ds in earlier], inputs.model, node, str(generate_uid()),
                str(generate_uid()), inputs.supersedes or "superseded by a later run")))
        return objects

    def run(self, job_id: int, inputs: JobInputs, owner: str) -> RunReport:
        """Segment, classify, build and store the SEG and SR. The result rows commit only while
        ``owner`` still holds the job (else :class:`LeaseLost`): one set of results per job."""
        report = RunReport()
        clock = time.perf_counter()
        volumes = load_study_volumes(inputs.t2_paths, inputs.t1_paths)
        report.timings["read"] = time.perf_counter() - clock
        clock = time.perf_counter()
        engine = self._engine(inputs.model_version_id, inputs.model_path,
                              inputs.model.manifest_sha256)
        report.timings["model_load"] = time.perf_counter() - clock  # ~0 once cached

        clock = time.perf_counter()
        lesions = engine.segment(
            volumes.t2, volumes.t1, volumes.t1_available, volumes.pixel_spacing,
            volumes.slice_spacing,
        )
        report.lesions = lesions
        report.findings = findings_by_class(lesions)
        report.timings["inference"] = time.perf_counter() - clock

        clock = time.perf_counter()
        objects = self._build(inputs, volumes, lesions)
        report.timings["building"] = time.perf_counter() - clock
        clock = time.perf_counter()
        stored: list[tuple[str, Any, Path, int]] = []
        for kind, dataset in objects:
            buffer = io.BytesIO()
            dataset.save_as(buffer, enforce_file_format=True)
            relative = relative_path(
                "results", inputs.study_instance_uid, str(dataset.SeriesInstanceUID),
                str(dataset.SOPInstanceUID),
            )
            write_atomically(self._root, relative, buffer.getvalue())
            stored.append((kind, dataset, relative, buffer.tell()))
            report.result_paths.append(self._root / relative)
        with self._sessions.begin() as session:
            require_lease(session, job_id, owner)  # else the results are discarded
            # The findings go with the results, so a retry that reuses them keeps them.
            job = session.get(Job, job_id)
            if job is not None:
                job.findings = report.findings
            for kind, dataset, relative, size in stored:
                session.add(
                    ResultObject(
                        job_id=job_id, kind=kind, sop_class_uid=str(dataset.SOPClassUID),
                        sop_instance_uid=str(dataset.SOPInstanceUID),
                        series_instance_uid=str(dataset.SeriesInstanceUID),
                        path=str(relative), created_at=utcnow(),
                    )
                )
                audit.record(
                    session, "result.built", study_instance_uid=inputs.study_instance_uid,
                    series_instance_uid=str(dataset.SeriesInstanceUID),
                    sop_instance_uid=str(dataset.SOPInstanceUID), job_id=job_id,
                    model_version=inputs.model.label, kind=kind, size_bytes=size,
                    lesions=len(lesions.lesions),
                )
        report.timings["encoding"] = time.perf_counter() - clock
        return report


def _read_superseded(objects: tuple[tuple[str, Path], ...]) -> list[tuple[str, Dataset]]:
    """The replaced results as datasets; one that cannot be read is left out (logged)."""
    read: list[tuple[str, Dataset]] = []
    for kind, path in objects:
        try:
            read.append((kind, dcmread(path)))
        except (OSError, InvalidDicomError) as error:
            logger.warning("cannot read superseded %s %s: %s", kind, path.name, error)
    return read


def findings_by_class(lesions: LesionSegmentation) -> dict[str, int]:
    """How many lesions of each class (every class named, zero included)."""
    counts = {lesion_class.value: 0 for lesion_class in LesionClass}
    for lesion in lesions.lesions:
        counts[lesion.lesion_class.value] += 1
    return counts
