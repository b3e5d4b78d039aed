"""Read our result objects back (as a PACS received them) into arrays and rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import highdicom as hd
import numpy as np
from skimage.measure import label, regionprops

from node.results import codes


@dataclass(frozen=True)
class ReportedLesion:
    """A lesion as the SEG and SR describe it; ``slices`` index the T2 stack in normal order."""

    lesion_class: str
    volume_mm3: float
    slices: tuple[int, ...]
    mask: np.ndarray  # bool (slices, rows, cols)


CLASS_BY_TYPE = {(code.value, code.scheme_designator): lesion_class.value
                  for lesion_class, code in codes.LESION_TYPE.items()}


def segmentation_pixels(
    seg: hd.seg.Segmentation, source_slices: list[tuple[str, int | None]]
) -> np.ndarray:
    """A SEG's pixels ``(slices, rows, cols, segments)`` on ``source_slices`` ((SOP Instance
    UID, frame number or None) in slice order), mapped by the source each SEG frame references,
    never by frame index."""
    frame_numbers = [frame for _, frame in source_slices]
    if all(frame is None for frame in frame_numbers):
        return np.asarray(seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[uid for uid, _ in source_slices],
            assert_missing_frames_are_empty=True,
            ignore_spatial_locations=True,
        ))
    uids = {uid for uid, _ in source_slices}
    if len(uids) != 1 or any(frame is None for frame in frame_numbers):
        raise ValueError("frames of one multi-frame source instance, or single-frame instances")
    return np.asarray(seg.get_pixels_by_source_frame(
        source_sop_instance_uid=uids.pop(),
        source_frame_numbers=[int(frame) for frame in frame_numbers if frame is not None],
        assert_missing_frames_are_empty=True,
        ignore_spatial_locations=True,
    ))


def read_segmentation(
    seg_path: Path, source_slices: list[tuple[str, int | None]], voxel_volume_mm3: float
) -> list[ReportedLesion]:
    """Lesions of a SEG on the grid of ``source_slices`` (see :func:`segmentation_pixels`):
    each 3D connected component of each segment."""
    seg = hd.seg.segread(seg_path)
    pixels = segmentation_pixels(seg, source_slices)
    lesions: list[ReportedLesion] = []
    for index, description in enumerate(seg.SegmentSequence):
        property_type = description.SegmentedPropertyTypeCodeSequence[0]
        lesion_class = CLASS_BY_TYPE.get(
            (property_type.CodeValue, property_type.CodingSchemeDesignator), "UNKNOWN"
        )
        components = label(pixels[..., index] > 0, connectivity=2)
        for region in regionprops(components):
            mask = components == region.label
            lesions.append(
                ReportedLesion(
                    lesion_class=lesion_class,
                    volume_mm3=float(region.area) * voxel_volume_mm3,
                    slices=tuple(sorted({int(k) for k in region.coords[:, 0]})),
                    mask=mask,
                )
            )
    lesions.sort(key=lambda lesion: (lesion.slices[0], -lesion.volume_mm3))
    return lesions


def read_report_statements(sr_path: Path) -> tuple[int, list[str]]:
    """Number of lesion measurement groups in an SR and its document-level statements."""
    sr = hd.sr.srread(sr_path)
    report = cast(hd.sr.MeasurementReport, sr.content)
    groups = report.get_volumetric_roi_measurement_groups()
    statements: list[str] = []
    for item in sr.ContentSequence:
        name = item.ConceptNameCodeSequence[0]
        if name.CodeValue == codes.QUALITATIVE_EVALUATIONS.value:
            statements.extend(str(child.TextValue) for child in item.ContentSequence)
    return len(groups), statements
