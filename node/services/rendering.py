"""`lacuna render`: the montage of a study's latest clinical result, from what is stored."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
from sqlalchemy import select

from node.db.engine import SessionFactory
from node.db.tables import Instance, Job, ModelVersion, ResultObject, Series, Study
from node.domain.jobs import JobState
from node.domain.series import SeriesRole
from node.errors import LacunaError
from node.results.readback import CLASS_BY_TYPE, segmentation_pixels
from node.results.render import RenderInput, montage, write_png
from node.services.volumes import read_series, source_slices


def render_study(sessions: SessionFactory, storage_root: Path, study_instance_uid: str,
                 out: Path, job_id: int | None = None) -> Path:
    """Write ``out`` (PNG) for the study's newest finished clinical job, or ``job_id``."""
    with sessions.begin() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
        if study is None:
            raise LacunaError(f"no study {study_instance_uid}")
        query = select(Job).where(Job.study_id == study.id)
        query = (query.where(Job.id == job_id) if job_id is not None else
                 query.where(Job.state == JobState.DONE, Job.shadow.is_(False)))
        job = session.scalar(query.order_by(Job.id.desc()).limit(1))
        if job is None:
            raise LacunaError(f"study {study_instance_uid} has no finished job to render")
        model = session.get(ModelVersion, job.model_version_id)
        seg = session.scalar(select(ResultObject.path).where(
            ResultObject.job_id == job.id, ResultObject.kind == "SEG"))
        t2 = [storage_root / path for path in session.scalars(
            select(Instance.path).join(Series).where(
                Series.study_id == study.id, Series.role == SeriesRole.T2_FLAIR))]
        title = (f"{model.name} {model.version} - job {job.id}, run {job.run}" if model
                 else f"job {job.id}")
    if not t2:
        raise LacunaError(f"study {study_instance_uid} has no T2 FLAIR series")
    series = read_series(t2)
    masks: dict[str, np.ndarray] = {}
    if seg is not None:
        segmentation = hd.seg.segread(storage_root / seg)
        pixels = segmentation_pixels(segmentation, source_slices(series.planes)) > 0
        for index, description in enumerate(segmentation.SegmentSequence):
            code = description.SegmentedPropertyTypeCodeSequence[0]
            name = CLASS_BY_TYPE.get((code.CodeValue, code.CodingSchemeDesignator), "UNKNOWN")
            masks[name] = masks.get(name, np.zeros(pixels.shape[:3], bool)) | pixels[..., index]
    write_png(montage(RenderInput(series.pixels, masks, title)), out)
    return out
