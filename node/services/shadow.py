"""Shadow comparison: how a candidate model version's results agree with the clinical ones on
the same live studies, so a version is promoted on evidence.

Per study, the latest finished clinical run is compared with the latest finished shadow run
of the candidate: lesion counts by class, and the Dice of the lesion area (union of all
classes) read back from the two SEGs on the T2 FLAIR grid.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.multival import MultiValue
from sqlalchemy import select
from sqlalchemy.orm import Session

from node.db.tables import Job, ModelVersion, ResultObject, Study
from node.domain.jobs import JobState
from node.results.readback import segmentation_pixels


@dataclass(frozen=True)
class StudyAgreement:
    study_instance_uid: str
    clinical_job_id: int
    shadow_job_id: int
    clinical_model: str
    clinical_findings: dict[str, int]
    shadow_findings: dict[str, int]
    dice: float  # 1.0 when both found nothing

    @property
    def same_counts(self) -> bool:
        return self.clinical_findings == self.shadow_findings


@dataclass(frozen=True)
class ShadowComparison:
    candidate: str
    studies: list[StudyAgreement]
    pending: int  # shadow runs not finished, or whose clinical run is not finished

    @property
    def mean_dice(self) -> float | None:
        return statistics.fmean(s.dice for s in self.studies) if self.studies else None

    @property
    def median_dice(self) -> float | None:
        return statistics.median(s.dice for s in self.studies) if self.studies else None

    @property
    def count_agreement(self) -> float | None:
        """Share of studies where both found the same number of lesions of each class."""
        if not self.studies:
            return None
        return sum(s.same_counts for s in self.studies) / len(self.studies)


def _latest_done(session: Session, study_id: int, shadow: bool,
                 model_version_id: int | None = None) -> Job | None:
    query = (select(Job).where(Job.study_id == study_id, Job.shadow.is_(shadow),
                               Job.state == JobState.DONE)
             .order_by(Job.finished_at.desc(), Job.id.desc()).limit(1))
    if model_version_id is not None:
        query = query.where(Job.model_version_id == model_version_id)
    return session.scalar(query)


def _seg_path(session: Session, root: Path, job_id: int) -> Path | None:
    relative = session.scalar(select(ResultObject.path).where(
        ResultObject.job_id == job_id, ResultObject.kind == "SEG"))
    return None if relative is None else root / relative


def _lesion_masks(paths: list[Path | None]) -> list[np.ndarray]:
    """Lesion-area masks (all segments) of each SEG on one common list of source slices; an
    absent SEG (a negative study) is an empty mask of the others' shape."""
    segs = [None if path is None else hd.seg.segread(path) for path in paths]
    sources = sorted({_source_slice(ref) for seg in segs if seg is not None
                      for frame in seg.PerFrameFunctionalGroupsSequence
                      for image in frame.DerivationImageSequence
                      for ref in image.SourceImageSequence}, key=lambda s: (s[0], s[1] or 0))
    masks: list[np.ndarray | None] = [
        None if seg is None else np.asarray(segmentation_pixels(seg, sources).any(axis=-1),
                                            dtype=bool)
        for seg in segs]
    shape = next((m.shape for m in masks if m is not None), (0, 1, 1))
    return [np.zeros(shape, dtype=bool) if m is None else m for m in masks]


def _source_slice(reference: Dataset) -> tuple[str, int | None]:
    """(SOP Instance UID, frame number or None) a SEG frame was derived from."""
    frame = reference.get("ReferencedFrameNumber")
    if isinstance(frame, list | tuple | MultiValue):
        frame = frame[0] if frame else None
    return str(reference.ReferencedSOPInstanceUID), None if frame in (None, "") else int(frame)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def compare(session: Session, storage_root: Path, candidate: ModelVersion) -> ShadowComparison:
    label = f"{candidate.name} {candidate.version}"
    shadow_study_ids = list(session.scalars(
        select(Job.study_id).where(Job.shadow.is_(True), Job.model_version_id == candidate.id)
        .distinct().order_by(Job.study_id)))
    studies, pending = [], 0
    for study_id in shadow_study_ids:
        shadow_job = _latest_done(session, study_id, True, candidate.id)
        clinical_job = _latest_done(session, study_id, False)
        if shadow_job is None or clinical_job is None:
            pending += 1
            continue
        clinical_version = session.get(ModelVersion, clinical_job.model_version_id)
        study = session.get(Study, study_id)
        clinical_mask, shadow_mask = _lesion_masks([
            _seg_path(session, storage_root, clinical_job.id),
            _seg_path(session, storage_root, shadow_job.id)])
        studies.append(StudyAgreement(
            study_instance_uid=study.study_instance_uid if study else str(study_id),
            clinical_job_id=clinical_job.id, shadow_job_id=shadow_job.id,
            clinical_model=(f"{clinical_version.name} {clinical_version.version}"
                            if clinical_version else "?"),
            clinical_findings=dict(clinical_job.findings or {}),
            shadow_findings=dict(shadow_job.findings or {}),
            dice=dice(clinical_mask, shadow_mask),
        ))
    return ShadowComparison(candidate=label, studies=studies, pending=pending)
