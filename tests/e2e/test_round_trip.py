"""A study in with dcmtk storescu, SEG + SR out to dcmtk storescp, validated by dciodvfy."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import func, select

from models.package import default_package_dir, read_manifest
from node.app import EmbeddedNode
from node.db.tables import AuditEvent, Delivery, Instance, Job
from node.domain.jobs import JobState
from node.results.readback import read_report_statements, read_segmentation
from node.services.volumes import read_series, source_slices
from tests.conftest import dciodvfy_errors, wait_for
from tests.e2e.conftest import Pacs, storescu
from training.synth import write_study

pytestmark = pytest.mark.e2e


def finished_job(node: EmbeddedNode) -> Job:
    def done() -> Job | None:
        with node.database.sessions.begin() as session:
            job = session.scalar(select(Job))
            return job if job is not None and job.state in (JobState.DONE, JobState.FAILED) else None
    return wait_for(done, timeout_s=240)


def test_study_in_seg_and_sr_out(  # type: ignore[no-untyped-def]
    node: EmbeddedNode, pacs: Pacs, synthetic_study, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sent = storescu(node.port, synthetic_study.folder)
    assert sent.returncode == 0, sent.stderr

    job = finished_job(node)
    assert job.state == JobState.DONE, job.error
    received = wait_for(lambda: (r := pacs.received()) and {"SEG", "SR"} <= set(r) and r)
    seg_path, sr_path = received["SEG"][0], received["SR"][0]
    assert dciodvfy_errors(seg_path, warnings=True) == []
    assert dciodvfy_errors(sr_path, warnings=True) == []

    # The SEG's lesions overlap the ground truth: most true lesions are found.
    planes = read_series(sorted((synthetic_study.folder / "T2_FLAIR").glob("*.dcm"))).planes
    voxel = planes[0].pixel_spacing[0] * planes[0].pixel_spacing[1] * 5.0
    lesions = read_segmentation(seg_path, source_slices(planes), voxel)
    truth = np.load(synthetic_study.folder / "labels.npy")
    from skimage.measure import label

    components = label(truth > 0, connectivity=2)
    found = sum(1 for n in range(1, components.max() + 1)
                if any((lesion.mask & (components == n)).any() for lesion in lesions))
    assert found >= 0.6 * components.max()
    groups, statements = read_report_statements(sr_path)
    assert groups == len(lesions)
    assert any("Not for clinical use" in s for s in statements)

    with node.database.sessions.begin() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 48
        deliveries = list(session.scalars(select(Delivery)))
        assert {d.state for d in deliveries} == {"delivered"} and len(deliveries) == 2
        started = session.scalar(select(AuditEvent).where(AuditEvent.action == "job.started"))
        bundled = read_manifest(default_package_dir())
        assert started is not None and started.model_version == f"{bundled.name} {bundled.version}"
        actions = list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))
    assert actions.count("instance.received") == 48
    for action in ("association.accepted", "job.queued", "job.started", "job.finished"):
        assert action in actions
    assert actions.count("result.built") == 2 and actions.count("delivery.succeeded") == 2

    # Re-sending the study is idempotent: no new instances, no new job, study not reopened.
    assert storescu(node.port, synthetic_study.folder).returncode == 0
    with node.database.sessions.begin() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 48
        assert session.scalar(select(func.count()).select_from(Job)) == 1
        actions = list(session.scalars(select(AuditEvent.action)))
    assert actions.count("instance.received") == 96
    assert "study.reopened" not in actions

    # `lacuna render`: the slices with lesions, each lesion outlined in its class colour.
    from PIL import Image

    from node.results.render import COLOURS
    from node.services.rendering import render_study

    png = render_study(node.database.sessions, node.settings.storage.root,
                       synthetic_study.study_instance_uid, node.settings.storage.root / "r.png")
    picture = np.asarray(Image.open(png).convert("RGB"))
    lesion_slices = {k for lesion in lesions for k in lesion.slices}
    assert picture.shape[0] > 256 and picture.shape[1] == 256 * min(4, len(lesion_slices))
    outlined = {name for name, colour in COLOURS.items()
                if (picture[60:] == colour).all(axis=-1).sum() > 10}  # below the header
    assert outlined == {lesion.lesion_class for lesion in lesions}

    # Logs carry UIDs, never the patient's name or ID.
    patient = pydicom.dcmread(next((synthetic_study.folder / "T2_FLAIR").glob("*.dcm")))
    logged = caplog.text
    assert synthetic_study.study_instance_uid in logged
    assert str(patient.PatientName) not in logged and str(patient.PatientID) not in logged


def test_t2_only_study_is_segmented_and_unclassified(
    node: EmbeddedNode, pacs: Pacs, tmp_path: Path
) -> None:
    study = write_study(tmp_path / "t2only", seed=31, include_t1=False, lesion_count=3)
    assert storescu(node.port, study.folder).returncode == 0
    job = finished_job(node)
    assert job.state == JobState.DONE, job.error
    received = wait_for(lambda: (r := pacs.received()) and {"SEG", "SR"} <= set(r) and r)
    groups, statements = read_report_statements(received["SR"][0])
    assert groups > 0
    assert any("no T1 FLAIR series" in s for s in statements)
    assert any(f"found: 0 FCI, 0 LACI, {groups} unclassified" in s for s in statements)
    assert dciodvfy_errors(received["SEG"][0], warnings=True) == []
    assert dciodvfy_errors(received["SR"][0], warnings=True) == []
    segments = pydicom.dcmread(received["SEG"][0]).SegmentSequence
    # One segment per lesion, each labelled with its number and the class it could not get.
    assert [str(s.SegmentLabel) for s in segments] == [
        f"Lesion {n}: Unclassified lesion" for n in range(1, groups + 1)]
