"""Multi-frame MR: a study whose T2 and T1 FLAIR come as one Enhanced MR (or Legacy Converted
Enhanced MR) instance each is split into slices by its functional groups and gives the same
lesions, on the same voxels, as the single-frame study; the SEG references source frames."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from node.app import EmbeddedNode
from node.db.tables import Job, ResultObject, Series, Study
from node.domain.jobs import JobState
from node.results.readback import segmentation_pixels
from node.services.volumes import read_series, source_slices
from tests.conftest import dciodvfy_errors, wait_for
from tests.e2e.conftest import ENGINES, storescu
from training.phantom import Contrast
from training.synth import multiframe_series

pytestmark = pytest.mark.e2e

VARIANTS = {"enhanced": True, "legacy-converted": False}


def lesion_mask(node: EmbeddedNode, job: Job, t2_files: list[Path]) -> np.ndarray:
    """The job's SEG read back onto the slices of ``t2_files`` in normal order."""
    with node.database.sessions.begin() as session:
        relative = session.scalar(select(ResultObject.path).where(
            ResultObject.job_id == job.id, ResultObject.kind == "SEG"))
    assert relative is not None
    path = node.settings.storage.root / relative
    assert dciodvfy_errors(path, warnings=True) == []
    seg = hd.seg.segread(path)
    return segmentation_pixels(seg, source_slices(read_series(t2_files).planes)).any(axis=-1)


@pytest.mark.parametrize("engine", ENGINES)
def test_enhanced_mr_studies_find_the_same_lesions_as_single_frame(
    node: EmbeddedNode, synthetic_study, tmp_path: Path, engine: str  # type: ignore[no-untyped-def]
) -> None:
    t2_files = {"single-frame": synthetic_study.series[Contrast.T2_FLAIR]}
    assert storescu(node.port, synthetic_study.folder).returncode == 0
    for name, enhanced in VARIANTS.items():
        study_uid = str(generate_uid())
        for contrast, paths in synthetic_study.series.items():
            dataset = multiframe_series(paths, enhanced)
            dataset.StudyInstanceUID = study_uid
            path = tmp_path / name / f"{contrast.value}.dcm"
            path.parent.mkdir(exist_ok=True)
            dataset.save_as(path, enforce_file_format=True)
            if contrast is Contrast.T2_FLAIR:
                t2_files[name] = [path]
        sent = storescu(node.port, tmp_path / name, "-R")  # propose the SOP classes present
        assert sent.returncode == 0, sent.stderr

    def all_done() -> dict[str, Job] | None:
        with node.database.sessions.begin() as session:
            rows = session.execute(select(Job, Study.study_instance_uid)
                                   .join(Study, Job.study_id == Study.id)).all()
            roles = dict(session.execute(select(Series.series_instance_uid, Series.role)).all())
        assert not [job.error for job, _ in rows if job.state == JobState.FAILED]
        done = {uid: job for job, uid in rows if job.state == JobState.DONE}
        return done if len(done) == 3 and len(roles) == 6 else None

    jobs = wait_for(all_done, timeout_s=300, interval_s=1.0)
    study_of = {"single-frame": synthetic_study.study_instance_uid}
    for name in VARIANTS:
        study_of[name] = str(dcmread(t2_files[name][0], stop_before_pixels=True).StudyInstanceUID)
    with node.database.sessions.begin() as session:
        assert set(session.scalars(select(Series.role))) == {"T2_FLAIR", "T1_FLAIR"}

    reference = jobs[study_of["single-frame"]]
    reference_mask = lesion_mask(node, reference, t2_files["single-frame"])
    assert reference.findings and sum(reference.findings.values()) > 0
    for name in VARIANTS:
        job = jobs[study_of[name]]
        assert job.findings == reference.findings, name
        np.testing.assert_array_equal(lesion_mask(node, job, t2_files[name]), reference_mask)
