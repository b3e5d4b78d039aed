"""A hospital's own labelled data for ``lacuna-train train --data DIR``: what its radiologists
annotated in their viewer, as DICOM.

Every ``*.dcm`` under ``DIR`` is read (headers first) and grouped by study. A study is used
when it holds a T2 FLAIR series (found by the node's own series-role rules, so training sees
exactly what the node would process), optionally a T1 FLAIR, and a DICOM SEG whose frames
reference the T2 FLAIR. Each segment becomes a class by its Segmented Property Type: SCT
52674009 *Ischemia* is FCI and SCT 230698000 *Lacunar infarction* is LACI (the codes Lacuna
writes), or by a segment label that names FCI or LACI. Other segments are ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from node.domain.series import SeriesRole, assign_roles, series_attributes_from_json
from node.results.readback import segmentation_pixels
from node.services.intake import series_attributes
from node.services.volumes import load_study_volumes, read_series, source_slices
from training.dataset import SubjectArrays, subject_from_volumes

logger = logging.getLogger(__name__)

CLASS_CODES = {("52674009", "SCT"): 1, ("230698000", "SCT"): 2}  # FCI, LACI label values


@dataclass(frozen=True)
class LabelledStudy:
    """The files of one usable study: its T2 and T1 FLAIR instances and the SEG."""

    study_instance_uid: str
    t2_paths: list[Path]
    t1_paths: list[Path]
    seg_path: Path


def segment_class(description: object) -> int:
    """1 (FCI), 2 (LACI) or 0 (not a lesion class we train) for one SEG segment item."""
    for code in getattr(description, "SegmentedPropertyTypeCodeSequence", []):
        value = CLASS_CODES.get((str(code.CodeValue), str(code.CodingSchemeDesignator)))
        if value:
            return value
    text = str(getattr(description, "SegmentLabel", "")).upper()
    if "LACI" in text or "LACUN" in text:
        return 2
    if "FCI" in text or "ISCHEM" in text:
        return 1
    return 0


def find_labelled_studies(root: Path) -> list[LabelledStudy]:
    """Every study under ``root`` with a T2 FLAIR and a SEG on it; others are logged and skipped."""
    by_study: dict[str, dict[str, list[tuple[Path, object]]]] = {}
    for path in sorted(root.rglob("*.dcm")):
        try:
            header = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError) as error:
            logger.warning("skipping %s: %s", path, error)
            continue
        series = by_study.setdefault(str(header.StudyInstanceUID), {})
        series.setdefault(str(header.SeriesInstanceUID), []).append((path, header))
    studies = []
    for study_uid, series in by_study.items():
        segs = [path for items in series.values() for path, header in items
                if getattr(header, "Modality", "") == "SEG"]
        mr = {uid: items for uid, items in series.items()
              if getattr(items[0][1], "Modality", "") == "MR"}
        decisions = assign_roles([
            series_attributes_from_json(uid, getattr(items[0][1], "SeriesNumber", None),
                                        str(getattr(items[0][1], "SeriesDescription", "")),
                                        len(items), series_attributes(items[0][1]))  # type: ignore[arg-type]
            for uid, items in mr.items()])
        role_of = {decision.role: uid for uid, decision in decisions.items()}
        t2_uid = role_of.get(SeriesRole.T2_FLAIR)
        seg = next((path for path in segs if _references(path, t2_uid)), None)
        if t2_uid is None or seg is None:
            logger.warning("skipping study %s: %s", study_uid,
                           "no T2 FLAIR series" if t2_uid is None else "no SEG on its T2 FLAIR")
            continue
        t1_uid = role_of.get(SeriesRole.T1_FLAIR)
        studies.append(LabelledStudy(
            study_uid, [path for path, _ in mr[t2_uid]],
            [path for path, _ in mr[t1_uid]] if t1_uid else [], seg))
    return studies


def _references(seg_path: Path, series_uid: str | None) -> bool:
    header = dcmread(seg_path, stop_before_pixels=True)
    return any(str(item.SeriesInstanceUID) == series_uid
               for item in header.get("ReferencedSeriesSequence", []))


def study_labels(study: LabelledStudy) -> np.ndarray:
    """The SEG's lesion classes on the T2 FLAIR grid: uint8 ``(slices, rows, cols)``, 0, 1
    (FCI) or 2 (LACI), each frame placed by the source image it references."""
    planes = read_series(study.t2_paths).planes
    seg = hd.seg.segread(study.seg_path)
    pixels = segmentation_pixels(seg, source_slices(planes))
    labels = np.zeros(pixels.shape[:3], dtype=np.uint8)
    for index, description in enumerate(seg.SegmentSequence):
        value = segment_class(description)
        if value:
            labels[pixels[..., index] > 0] = value
    return labels


def load_labelled_studies(root: Path, matrix: tuple[int, int] = (256, 256),
                          grid_spacing_mm: float | None = None) -> list[SubjectArrays]:
    """Every usable study under ``root`` on the model grid (``matrix``, or with
    ``grid_spacing_mm`` that fixed-spacing grid), as training subjects."""
    from models.preprocessing import spacing_grid_shape

    subjects = []
    for study in find_labelled_studies(root):
        volumes = load_study_volumes(study.t2_paths, study.t1_paths)
        grid = matrix if grid_spacing_mm is None else spacing_grid_shape(
            volumes.t2.shape[1:], volumes.pixel_spacing, grid_spacing_mm)
        subjects.append(subject_from_volumes(volumes.t2, volumes.t1, volumes.t1_available,
                                             study_labels(study), grid))
    logger.info("%d labelled studies from %s", len(subjects), root)
    return subjects
