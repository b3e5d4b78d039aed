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


_CLASS_BY_TYPE = {(code.value, code.scheme_designator): lesion_class.value
                  for lesion_class, code in codes.LESION_TYPE.items()}


def read_segmentation(
    seg_path: Path, source_sop_instance_uids: list[str], voxel_volume_mm3: float
) -> list[ReportedLesion]:
    """Lesions of a SEG on the grid of ``source_sop_instance_uids`` (in slice order): each 3D
    connected component of each segment. Frames are mapped by referenced SOP instance, never by
    frame index."""
    seg = hd.seg.segread(seg_path)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=source_sop_instance_uids,
        assert_missing_frames_are_empty=True,
        ignore_spatial_locations=True,
    )  # (slices, rows, cols, segments)
    lesions: list[ReportedLesion] = []
    for index, description in enumerate(seg.SegmentSequence):
        property_type = description.SegmentedPropertyTypeCodeSequence[0]
        lesion_class = _CLASS_BY_TYPE.get(
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
