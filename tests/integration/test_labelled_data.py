"""A hospital's labelled data as training input: MR series plus a DICOM SEG ground truth,
found by the node's series rules and read back voxel for voxel."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid

from node.domain.lesions import LesionClass
from node.results.seg import build_segmentation
from node.services.volumes import load_study_volumes
from tests.integration.test_results import MODEL, NODE, truth_segmentation
from training.dicom_data import find_labelled_studies, load_labelled_studies, segment_class, study_labels
from training.phantom import Contrast
from training.synth import write_study


def annotated_folder(study, root: Path) -> Path:  # type: ignore[no-untyped-def]
    """``root`` holding ``study`` with its ground truth as a DICOM SEG, as a radiologist's
    viewer would save it, and a second study that nobody annotated."""
    shutil.copytree(study.folder, root / "study-1")
    labels = np.load(study.folder / "labels.npy")
    volumes = load_study_volumes(study.series[Contrast.T2_FLAIR], [])
    truth = truth_segmentation(labels, {1: LesionClass.FCI, 2: LesionClass.LACI})
    seg = build_segmentation(volumes.t2_datasets, truth, MODEL, str(generate_uid()), str(generate_uid()),
                             node=NODE)
    (root / "study-1" / "SEG").mkdir()
    seg.save_as(root / "study-1" / "SEG" / "truth.dcm", enforce_file_format=True)
    write_study(root / "study-2", seed=77)  # no SEG: skipped, with a reason in the log
    return root


def test_a_study_with_a_seg_becomes_a_training_subject(synthetic_study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = annotated_folder(synthetic_study, tmp_path / "annotated")
    labels = np.load(synthetic_study.folder / "labels.npy")

    [study] = find_labelled_studies(root)
    assert study.study_instance_uid == synthetic_study.study_instance_uid
    assert len(study.t2_paths) == len(study.t1_paths) == labels.shape[0]
    np.testing.assert_array_equal(study_labels(study), labels)  # FCI 1 and LACI 2, voxel for voxel

    [subject] = load_labelled_studies(root)
    np.testing.assert_array_equal(subject.labels, labels)  # 256x256: already the model grid
    assert subject.t2.shape == subject.t1.shape == labels.shape
    assert 0.5 < float(np.percentile(subject.t2[subject.t2 > 0.05], 99)) <= 2.0  # normalised


def test_segments_map_to_classes_by_code_or_label() -> None:
    def segment(code: tuple[str, str] | None, text: str) -> Dataset:
        item = Dataset()
        item.SegmentLabel = text
        if code:
            concept = Dataset()
            concept.CodeValue, concept.CodingSchemeDesignator = code
            item.SegmentedPropertyTypeCodeSequence = [concept]
        return item

    assert segment_class(segment(("52674009", "SCT"), "anything")) == 1
    assert segment_class(segment(("230698000", "SCT"), "anything")) == 2
    assert segment_class(segment(None, "Lacune 3")) == 2
    assert segment_class(segment(None, "FCI right")) == 1
    assert segment_class(segment(("12345", "99X"), "Ventricle")) == 0
