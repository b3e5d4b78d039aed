"""GSPS and secondary-capture fallbacks, one segment per lesion, and the TID 1411 extras: every
object valid by dciodvfy, readable by highdicom, drawn on the right source images."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from node.domain.lesions import LesionClass, LesionSegmentation
from node.results import codes
from node.results.fallbacks import (
    build_key_images,
    build_presentation_state,
    outlines,
    patient_orientation,
    shown_slices,
)
from node.results.readback import read_segmentation
from node.results.seg import build_segmentation, segment_numbers
from node.results.sr import build_report
from node.services.volumes import load_study_volumes, read_series, source_slices
from tests.conftest import dciodvfy_errors
from tests.integration.test_results import MODEL, NODE, series_files, truth_segmentation, write
from training.phantom import Contrast


def test_outline_runs_on_the_pixel_edges() -> None:
    mask = np.zeros((8, 8), bool)
    mask[2, 3] = True  # one pixel: its centre is (3.5, 2.5) in (column, row) PIXEL units
    [outline] = outlines(mask)
    assert np.allclose(outline[0], outline[-1])  # closed
    assert outline[:, 0].min() == pytest.approx(3.0) and outline[:, 0].max() == pytest.approx(4.0)
    assert outline[:, 1].min() == pytest.approx(2.0) and outline[:, 1].max() == pytest.approx(3.0)


@pytest.mark.parametrize(("orientation", "expected"), [
    ([1, 0, 0, 0, 1, 0], ("L", "P")),  # axial
    ([0, 1, 0, 0, 0, -1], ("P", "F")),  # sagittal
    ([1, 0, 0, 0, 0, -1], ("L", "F")),  # coronal
    ([0.94, 0.34, 0, -0.34, 0.94, 0], ("LP", "PR")),  # oblique axial
])
def test_patient_orientation(orientation: list[float], expected: tuple[str, str]) -> None:
    assert patient_orientation(orientation) == expected


@pytest.mark.parametrize("multiframe", ["single-frame", "enhanced"])
def test_gsps_and_key_images_for_a_positive_study(synthetic_study, tmp_path: Path, multiframe: str) -> None:  # type: ignore[no-untyped-def]
    files = series_files(synthetic_study, tmp_path, multiframe)
    volumes = load_study_volumes(files[Contrast.T2_FLAIR], files[Contrast.T1_FLAIR])
    labels = np.load(synthetic_study.folder / "labels.npy")
    result = truth_segmentation(labels, {1: LesionClass.FCI, 2: LesionClass.LACI})
    gsps = build_presentation_state(volumes.t2_datasets, volumes.t2, result, MODEL,
                                    str(generate_uid()), str(generate_uid()), volumes.t2_frames,
                                    node=NODE)
    gsps_path = write(gsps, tmp_path / "gsps.dcm")
    assert dciodvfy_errors(gsps_path, warnings=True) == []
    read_back = dcmread(gsps_path)  # highdicom 0.28 builds GSPS but has no reader for it
    assert read_back.SeriesDescription == codes.GSPS_SERIES_DESCRIPTION

    # Each annotation sits on the source slice (and frame) whose lesions it outlines.
    planes = read_series(files[Contrast.T2_FLAIR]).planes
    slice_of = {(p.sop_instance_uid, p.frame_number): k for k, p in enumerate(planes)}
    annotated = set()
    for annotation in read_back.GraphicAnnotationSequence:
        reference = annotation.ReferencedImageSequence[0]
        frame = int(reference.ReferencedFrameNumber) if "ReferencedFrameNumber" in reference else None
        k = slice_of[(str(reference.ReferencedSOPInstanceUID), frame)]
        annotated.add(k)
        for graphic in annotation.GraphicObjectSequence:
            points = np.asarray(graphic.GraphicData, dtype=float).reshape(-1, 2)
            column, row = points.mean(axis=0)
            # The outline's middle lies on (or beside) a lesion pixel of that slice.
            rows, cols = np.nonzero(labels[k])
            assert np.min(np.hypot(rows + 0.5 - row, cols + 0.5 - column)) < 3.0
    assert annotated == {k for k in range(labels.shape[0]) if labels[k].any()}

    lesion_slices = shown_slices(result)
    images = build_key_images(volumes.t2_datasets, volumes.t2, result, MODEL, str(generate_uid()),
                              [str(generate_uid()) for _ in lesion_slices], volumes.t2_frames,
                              node=NODE)
    assert len(images) == len(lesion_slices) == len(annotated)
    for image, k in zip(images, lesion_slices, strict=True):
        path = write(image, tmp_path / f"sc-{k}.dcm")
        assert dciodvfy_errors(path, warnings=True) == []
        back = hd.imread(path)  # highdicom reads the SC back as an image
        assert list(back.ImageType)[:2] == ["DERIVED", "SECONDARY"] and back.BurnedInAnnotation == "YES"
        assert back.StudyInstanceUID == synthetic_study.study_instance_uid
        source = back.SourceImageSequence[0]
        frame = int(source.ReferencedFrameNumber) if "ReferencedFrameNumber" in source else None
        assert slice_of[(str(source.ReferencedSOPInstanceUID), frame)] == k
        # The outlines are burned in: coloured pixels beside the lesion, grey elsewhere.
        rgb = back.pixel_array.astype(int)
        coloured = (np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])) > 60
        coloured[:14] = False  # the banner
        rows, cols = np.nonzero(coloured)
        lesion_rows, lesion_cols = np.nonzero(labels[k])
        assert len(rows) > 0
        assert np.hypot(rows.mean() - lesion_rows.mean(), cols.mean() - lesion_cols.mean()) < 60


def test_gsps_and_key_image_for_a_negative_study(synthetic_study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    volumes = load_study_volumes(synthetic_study.series[Contrast.T2_FLAIR], [])
    empty = LesionSegmentation(np.zeros(volumes.t2.shape, np.uint8),
                               np.zeros(volumes.t2.shape, np.uint16), ())
    gsps = build_presentation_state(volumes.t2_datasets, volumes.t2, empty, MODEL,
                                    str(generate_uid()), str(generate_uid()), node=NODE)
    path = write(gsps, tmp_path / "gsps.dcm")
    assert dciodvfy_errors(path, warnings=True) == []
    [annotation] = dcmread(path).GraphicAnnotationSequence
    assert "no FCI or LACI lesion" in annotation.TextObjectSequence[0].UnformattedTextValue
    [image] = build_key_images(volumes.t2_datasets, volumes.t2, empty, MODEL, str(generate_uid()),
                               [str(generate_uid())], node=NODE)
    path = write(image, tmp_path / "sc.dcm")
    assert dciodvfy_errors(path, warnings=True) == []


def test_one_segment_per_lesion_and_the_lesion_measurements(synthetic_study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    volumes = load_study_volumes(synthetic_study.series[Contrast.T2_FLAIR],
                                 synthetic_study.series[Contrast.T1_FLAIR])
    labels = np.load(synthetic_study.folder / "labels.npy")
    result = truth_segmentation(labels, {1: LesionClass.FCI, 2: LesionClass.LACI})
    numbers = segment_numbers(result, per_lesion=True)
    seg = build_segmentation(volumes.t2_datasets, result, MODEL, str(generate_uid()),
                             str(generate_uid()), per_lesion=True, node=NODE)
    assert len(seg.SegmentSequence) == len(result.lesions) == len(set(numbers.values()))
    seg_path = write(seg, tmp_path / "seg.dcm")
    assert dciodvfy_errors(seg_path, warnings=True) == []
    planes = read_series(synthetic_study.series[Contrast.T2_FLAIR]).planes
    lesions = read_segmentation(seg_path, source_slices(planes), voxel_volume_mm3=4.0)
    assert len(lesions) == len(result.lesions)  # one connected component per segment

    sr = build_report(volumes.t2_instances + volumes.t1_instances, result.lesions, seg, numbers,
                      str(volumes.t2_datasets[0].SeriesInstanceUID), MODEL, None,
                      str(generate_uid()), str(generate_uid()), node=NODE)
    sr_path = write(sr, tmp_path / "sr.dcm")
    assert dciodvfy_errors(sr_path, warnings=True) == []
    report = cast(hd.sr.MeasurementReport, hd.sr.srread(sr_path).content)
    groups = report.get_volumetric_roi_measurement_groups()
    by_tracking = {g.tracking_identifier: g for g in groups}
    for lesion in result.lesions:
        group = by_tracking[f"Lesion {lesion.number}"]
        assert group.referenced_segment.referenced_segment_numbers == [numbers[lesion.number]]
        found = {m.name.value: m for m in group.get_measurements()}
        assert found[codes.DIAMETER.value].value == pytest.approx(lesion.largest_diameter_mm)
        assert found[codes.DIAMETER.value].unit.value == "mm"
        assert found[codes.VOLUME.value].value == pytest.approx(round(lesion.volume_mm3, 2))
        assert found[codes.CERTAINTY_OF_FINDING.value].value == pytest.approx(
            round(100 * float(lesion.class_probability or 0), 1))
        evaluations = {e.name.value: e.value.value for e in group.get_qualitative_evaluations()}
        t1_dark = lesion.lesion_class is LesionClass.LACI
        assert evaluations[codes.T1_HYPOINTENSITY.value] == (
            codes.PRESENT if t1_dark else codes.ABSENT).value
