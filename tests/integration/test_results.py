"""SEG and SR built from known lesions: valid by dciodvfy, readable by highdicom, frames on the
right source images."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.uid import generate_uid

from models.inference import in_plane_diameter_mm
from node.domain.lesions import LABEL_VALUES, Lesion, LesionClass, LesionSegmentation
from node.results.identity import ModelIdentity, NodeIdentity
from node.results.readback import read_report_statements, read_segmentation
from node.results.seg import build_segmentation, new_tracking_uids, segment_numbers
from node.results.sr import build_report
from node.services.volumes import load_study_volumes, read_series, source_slices
from tests.conftest import dciodvfy_errors
from training.phantom import Contrast

MODEL = ModelIdentity("lacuna-test", "9.9.9", "ab" * 32, "synthetic test data")
NODE = NodeIdentity("1.2.826.0.1.3680043.8.498.1", "LACUNA-TEST01")


def truth_segmentation(labels: np.ndarray, classes: dict[int, LesionClass]) -> LesionSegmentation:
    """A LesionSegmentation from ground-truth labels (1 FCI, 2 LACI) as the engine would."""
    from skimage.measure import label, regionprops

    numbers = label(labels > 0, connectivity=2)
    out = np.zeros(labels.shape, np.uint8)
    lesions = []
    for region in regionprops(numbers):
        value = int(np.bincount(labels[tuple(region.coords.T)]).argmax())
        lesion_class = classes[value]
        out[tuple(region.coords.T)] = LABEL_VALUES[lesion_class]
        p_laci = 0.9 if lesion_class is LesionClass.LACI else 0.2
        lesions.append(Lesion(region.label, lesion_class, p_laci, int(region.area),
                              float(region.area) * 4.0, 10.0,
                              tuple(sorted({int(k) for k in region.coords[:, 0]})),
                              tuple(region.centroid),  # type: ignore[arg-type]
                              in_plane_diameter_mm(region.coords, (1.0, 1.0))))
    return LesionSegmentation(out, numbers.astype(np.uint16), tuple(lesions))


def write(dataset, path: Path) -> Path:  # type: ignore[no-untyped-def]
    dataset.save_as(path, enforce_file_format=True)
    return path


def series_files(study, tmp_path: Path, multiframe: str) -> dict[Contrast, list[Path]]:  # type: ignore[no-untyped-def]
    """The study's series as written, or each as one multi-frame instance."""
    if multiframe == "single-frame":
        return dict(study.series)
    from training.synth import multiframe_series

    files = {}
    for contrast, paths in study.series.items():
        path = tmp_path / f"{contrast.value}.dcm"
        multiframe_series(paths, enhanced=multiframe == "enhanced").save_as(
            path, enforce_file_format=True)
        files[contrast] = [path]
    return files


@pytest.mark.parametrize("multiframe", ["single-frame", "enhanced", "legacy-converted"])
def test_seg_and_sr_for_a_positive_study(synthetic_study, tmp_path: Path, multiframe: str) -> None:  # type: ignore[no-untyped-def]
    files = series_files(synthetic_study, tmp_path, multiframe)
    volumes = load_study_volumes(files[Contrast.T2_FLAIR], files[Contrast.T1_FLAIR])
    labels = np.load(synthetic_study.folder / "labels.npy")
    result = truth_segmentation(labels, {1: LesionClass.FCI, 2: LesionClass.LACI})
    tracking = new_tracking_uids(result)
    seg = build_segmentation(volumes.t2_datasets, result, MODEL, str(generate_uid()),
                             str(generate_uid()), source_frames=volumes.t2_frames, node=NODE,
                             tracking_uids=tracking)
    sr = build_report(volumes.t2_instances + volumes.t1_instances, result.lesions, seg,
                      segment_numbers(result), str(volumes.t2_datasets[0].SeriesInstanceUID),
                      MODEL, None, str(generate_uid()), str(generate_uid()), tracking_uids=tracking,
                      source_slices=list(zip(volumes.t2_datasets, volumes.t2_frames, strict=True)),
                      node=NODE)
    seg_path, sr_path = write(seg, tmp_path / "seg.dcm"), write(sr, tmp_path / "sr.dcm")
    assert dciodvfy_errors(seg_path, warnings=True) == []
    assert dciodvfy_errors(sr_path, warnings=True) == []

    # The algorithm as IHE AI Results identifies it, on both objects: Processing Equipment
    # (CID 7005) with the model's name and version and the installation's serial number.
    for made in (seg, sr):
        # highdicom adds the source's acquisition equipment and itself beside ours.
        [equipment] = [e for e in made.ContributingEquipmentSequence if e.Manufacturer == "Lacuna"]
        purpose = equipment.PurposeOfReferenceCodeSequence[0]
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109102", "DCM")
        assert equipment.ManufacturerModelName == MODEL.name
        assert MODEL.version in equipment.SoftwareVersions
        assert equipment.DeviceSerialNumber == NODE.serial_number
        assert "DeviceUID" not in equipment  # not an attribute of this sequence

    # Same study, new series; the model is named.
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == synthetic_study.study_instance_uid
    assert "NOT FOR CLINICAL USE" in seg.SeriesDescription
    read_seg = hd.seg.segread(seg_path)
    assert read_seg.SegmentSequence[0].SegmentAlgorithmName == MODEL.name

    # Every frame lands on the source slice (or source frame) it was computed from.
    planes = read_series(files[Contrast.T2_FLAIR]).planes
    lesions = read_segmentation(seg_path, source_slices(planes), voxel_volume_mm3=4.0)
    back = np.zeros(labels.shape, bool)
    for lesion in lesions:
        back |= lesion.mask
    np.testing.assert_array_equal(back, labels > 0)
    assert sorted(lesion.lesion_class for lesion in lesions) == sorted(
        lesion.lesion_class.value for lesion in result.lesions)

    groups, statements = read_report_statements(sr_path)
    assert groups == len(result.lesions)
    assert any("Not for clinical use" in s for s in statements)
    assert any(f"{len(result.lesions)} lesion(s) found" in s for s in statements)
    # Each lesion's group references the source images (and frames) the lesion lies on.
    report = hd.sr.srread(sr_path).content
    for group, lesion in zip(report.get_volumetric_roi_measurement_groups(), result.lesions,
                             strict=True):
        referenced = {(item.referenced_sop_instance_uid, frame)
                      for item in group.referenced_segment.source_images_for_segmentation
                      for frame in (item.referenced_frame_numbers or [None])}
        assert referenced == {(planes[k].sop_instance_uid, planes[k].frame_number)
                              for k in lesion.slices}


def test_negative_report(synthetic_study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    volumes = load_study_volumes(synthetic_study.series[Contrast.T2_FLAIR], [])
    sr = build_report(volumes.t2_datasets, (), None, {}, "1.2.3", MODEL,
                      volumes.t1_missing_reason, str(generate_uid()), str(generate_uid()),
                      node=NODE)
    path = write(sr, tmp_path / "negative.dcm")
    assert dciodvfy_errors(path, warnings=True) == []
    groups, statements = read_report_statements(path)
    assert groups == 0
    assert statements[0] == "No FCI or LACI lesion found on T2 FLAIR."
    assert "no T1 FLAIR series" in statements[1]


def test_seg_refuses_an_empty_result(synthetic_study) -> None:  # type: ignore[no-untyped-def]
    empty = LesionSegmentation(np.zeros((24, 256, 256), np.uint8),
                               np.zeros((24, 256, 256), np.uint16), ())
    with pytest.raises(ValueError, match="no lesions"):
        build_segmentation([], empty, MODEL, "1.2", "1.3", node=NODE)
