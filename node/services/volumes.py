"""Read a study's T2 and T1 FLAIR series from storage into volumes on the T2 FLAIR grid.

T2 slices are ordered along their normal; each is paired with the nearest T1 slice in the same
frame of reference, and that T1 slice is resampled in-plane onto the T2 pixel grid (bilinear),
so unequal matrices, spacing or offsets are handled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from scipy.ndimage import map_coordinates

from node.domain.geometry import (
    GeometryError,
    SlicePlane,
    in_plane_indices,
    pair_slices,
    slice_spacing,
    sort_along_normal,
)
from node.errors import NotProcessable


@dataclass(frozen=True)
class StudyVolumes:
    """``t2`` and ``t1`` are float32 ``(slices, rows, cols)`` in stored-value units after the
    modality rescale; ``t1_available[k]`` is False where T2 slice k has no T1 partner."""

    t2_datasets: list[Dataset]
    t1_datasets: list[Dataset]
    t2: np.ndarray
    t1: np.ndarray | None
    t1_available: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    t1_missing_reason: str | None


def plane_of(dataset: Dataset) -> SlicePlane:
    try:
        x, y, z = (float(v) for v in dataset.ImagePositionPatient)
        rx, ry, rz, cx, cy, cz = (float(v) for v in dataset.ImageOrientationPatient)
        row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        raise GeometryError(
            f"{dataset.SOPInstanceUID} lacks valid ImagePositionPatient, "
            "ImageOrientationPatient or PixelSpacing"
        ) from None
    return SlicePlane(
        sop_instance_uid=str(dataset.SOPInstanceUID),
        frame_of_reference_uid=str(dataset.get("FrameOfReferenceUID", "")),
        position=(x, y, z),
        row_cosine=(rx, ry, rz),
        column_cosine=(cx, cy, cz),
        pixel_spacing=(row_spacing, column_spacing),
        rows=int(dataset.Rows),
        columns=int(dataset.Columns),
    )


def pixels_of(dataset: Dataset) -> np.ndarray:
    """Modality values (RescaleSlope/Intercept applied) as float32 ``(rows, cols)``."""
    array = dataset.pixel_array.astype(np.float32)
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    return array * slope + intercept


def read_series(paths: list[Path]) -> tuple[list[Dataset], list[SlicePlane]]:
    """Datasets and planes ordered along the slice normal (never by InstanceNumber)."""
    datasets = [dcmread(path) for path in paths]
    planes = {plane.sop_instance_uid: plane for plane in map(plane_of, datasets)}
    ordered = sort_along_normal(list(planes.values()))
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    return [by_uid[p.sop_instance_uid] for p in ordered], ordered


def load_study_volumes(t2_paths: list[Path], t1_paths: list[Path]) -> StudyVolumes:
    try:
        t2_datasets, t2_planes = read_series(t2_paths)
    except GeometryError as error:
        raise NotProcessable(f"T2 FLAIR series cannot be stacked: {error}") from error
    shapes = {(p.rows, p.columns) for p in t2_planes}
    if len(shapes) != 1:
        raise NotProcessable(f"T2 FLAIR slices have different matrices: {sorted(shapes)}")
    t2 = np.stack([pixels_of(ds) for ds in t2_datasets])

    t1_datasets: list[Dataset] = []
    t1: np.ndarray | None = None
    available = np.zeros(len(t2_planes), dtype=bool)
    reason: str | None = None
    if not t1_paths:
        reason = "the study has no T1 FLAIR series."
    else:
        try:
            t1_datasets, t1_planes = read_series(t1_paths)
        except GeometryError as error:
            t1_planes, reason = [], f"T1 FLAIR series cannot be stacked ({error})."
        pairs = pair_slices(t2_planes, t1_planes)
        if t1_planes and not any(index is not None for index in pairs):
            reason = "no T1 FLAIR slice matches a T2 FLAIR slice in position and frame of reference."
        if any(index is not None for index in pairs):
            t1 = np.zeros_like(t2)
            for k, index in enumerate(pairs):
                if index is None:
                    continue
                coordinates = in_plane_indices(t2_planes[k], t1_planes[index])
                t1[k] = map_coordinates(
                    pixels_of(t1_datasets[index]), coordinates, order=1, mode="constant", cval=0.0
                )
                available[k] = True
            if not available.all():
                reason = f"{int((~available).sum())} T2 FLAIR slice(s) have no T1 FLAIR partner."
    return StudyVolumes(
        t2_datasets=t2_datasets,
        t1_datasets=t1_datasets,
        t2=t2,
        t1=t1,
        t1_available=available,
        pixel_spacing=t2_planes[0].pixel_spacing,
        slice_spacing=slice_spacing(t2_planes),
        t1_missing_reason=reason,
    )
