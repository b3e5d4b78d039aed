"""Read a study's T2 and T1 FLAIR series from storage into volumes on the T2 FLAIR grid.

T2 slices are ordered along their normal. A T2 slice has a T1 partner where a T1 slice of the
same frame of reference, tilted by at most 10 degrees, lies within half a slice spacing (see
:func:`pair_slices`); its pixels then take, each, the T1 slice nearest to that pixel along the
T1 normal, interpolated in-plane (bilinear), so unequal matrices, spacing, offsets and stacks
tilted against each other are handled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from scipy.ndimage import map_coordinates

from node.dicom import frames
from node.domain.geometry import (
    GeometryError,
    SlicePlane,
    pair_slices,
    pairing_problem,
    slice_spacing,
    sort_along_normal,
    stack_indices,
)
from node.errors import NotProcessable


@dataclass(frozen=True)
class StudyVolumes:
    """``t2`` and ``t1`` are float32 ``(slices, rows, cols)`` in stored-value units after the
    modality rescale; ``t1_available[k]`` is False where T2 slice k has no T1 partner.
    ``t2_datasets[k]`` is the instance T2 slice k comes from and ``t2_frames[k]`` its frame
    number (None for single-frame instances)."""

    t2_datasets: list[Dataset]
    t1_datasets: list[Dataset]
    t2: np.ndarray
    t1: np.ndarray | None
    t1_available: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    t1_missing_reason: str | None
    t2_frames: list[int | None] = field(default_factory=list)

    @property
    def t2_instances(self) -> list[Dataset]:
        """The T2 FLAIR instances, each once (in the order of their first slice)."""
        return _unique(self.t2_datasets)

    @property
    def t1_instances(self) -> list[Dataset]:
        return _unique(self.t1_datasets)


def _unique(datasets: list[Dataset]) -> list[Dataset]:
    return list({str(ds.SOPInstanceUID): ds for ds in datasets}.values())


def _numbers(values: object, count: int, what: str, uid: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in values)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != count:
        raise GeometryError(f"{uid} lacks a valid {what}")
    return numbers


def plane_of(dataset: Dataset, frame: int | None = None) -> SlicePlane:
    """The plane of a single-frame image, or of frame ``frame`` (1-based) of a multi-frame
    one (from its functional groups)."""
    uid = str(dataset.SOPInstanceUID)

    def read(keyword: str, count: int) -> tuple[float, ...]:
        return _numbers(frames.attribute(dataset, keyword, frame or 1), count, keyword, uid)

    x, y, z = read("ImagePositionPatient", 3)
    rx, ry, rz, cx, cy, cz = read("ImageOrientationPatient", 6)
    row_spacing, column_spacing = read("PixelSpacing", 2)
    return SlicePlane(
        sop_instance_uid=uid,
        frame_of_reference_uid=str(dataset.get("FrameOfReferenceUID", "")),
        position=(x, y, z),
        row_cosine=(rx, ry, rz),
        column_cosine=(cx, cy, cz),
        pixel_spacing=(row_spacing, column_spacing),
        rows=int(dataset.Rows),
        columns=int(dataset.Columns),
        frame_number=frame,
    )


def pixels_of(dataset: Dataset) -> np.ndarray:
    """Modality values (rescale slope and intercept applied) as float32 ``(rows, cols)``, or
    ``(frames, rows, cols)`` for a multi-frame image (rescale from frame 1's functional
    groups: the Enhanced MR rescale is the same for all frames in practice)."""
    array = dataset.pixel_array.astype(np.float32)
    if frames.is_multiframe(dataset) and array.ndim == 2:  # one frame: no frame axis
        array = array[np.newaxis]
    slope = float(frames.attribute(dataset, "RescaleSlope") or 1)
    intercept = float(frames.attribute(dataset, "RescaleIntercept") or 0)
    return array * slope + intercept


@dataclass(frozen=True)
class SeriesSlices:
    """A series as slices ordered along the normal: the instance of each, its plane (with its
    frame number for multi-frame instances), and the pixels ``(slices, rows, cols)``."""

    datasets: list[Dataset]
    planes: list[SlicePlane]
    pixels: np.ndarray


def source_slices(planes: list[SlicePlane]) -> list[tuple[str, int | None]]:
    """(SOP Instance UID, frame number or None) of each slice: how a SEG references them."""
    return [(p.sop_instance_uid, p.frame_number) for p in planes]


def read_series(paths: list[Path]) -> SeriesSlices:
    """Every slice of a series, single-frame instances and frames of multi-frame ones alike,
    ordered along the slice normal (never by InstanceNumber or frame number)."""
    datasets = [dcmread(path) for path in paths]
    slices: dict[tuple[str, int | None], tuple[Dataset, SlicePlane]] = {}
    for dataset in datasets:
        if frames.is_multiframe(dataset):
            for frame in range(1, int(dataset.NumberOfFrames) + 1):
                plane = plane_of(dataset, frame)
                slices[(plane.sop_instance_uid, frame)] = (dataset, plane)
        else:
            plane = plane_of(dataset)
            slices[(plane.sop_instance_uid, None)] = (dataset, plane)
    ordered = sort_along_normal([plane for _, plane in slices.values()])
    shapes = {(p.rows, p.columns) for p in ordered}
    if len(shapes) != 1:
        raise GeometryError(f"slices have different matrices: {sorted(shapes)}")
    decoded = {str(ds.SOPInstanceUID): pixels_of(ds) for ds in datasets}
    pixels = np.stack([
        decoded[p.sop_instance_uid] if p.frame_number is None
        else decoded[p.sop_instance_uid][p.frame_number - 1]
        for p in ordered
    ])
    return SeriesSlices(
        datasets=[slices[(p.sop_instance_uid, p.frame_number)][0] for p in ordered],
        planes=ordered,
        pixels=pixels,
    )


def load_study_volumes(t2_paths: list[Path], t1_paths: list[Path]) -> StudyVolumes:
    try:
        t2_series = read_series(t2_paths)
    except GeometryError as error:
        raise NotProcessable(f"T2 FLAIR series cannot be stacked: {error}") from error
    t2_planes, t2 = t2_series.planes, t2_series.pixels

    t1_datasets: list[Dataset] = []
    t1: np.ndarray | None = None
    available = np.zeros(len(t2_planes), dtype=bool)
    reason: str | None = None
    if not t1_paths:
        reason = "the study has no T1 FLAIR series."
    else:
        t1_planes: list[SlicePlane] = []
        try:
            t1_series = read_series(t1_paths)
            t1_datasets, t1_planes = t1_series.datasets, t1_series.planes
        except GeometryError as error:
            reason = f"T1 FLAIR series cannot be stacked ({error})."
        pairs = pair_slices(t2_planes, t1_planes)
        if t1_planes and not any(index is not None for index in pairs):
            reason = pairing_problem(t2_planes, t1_planes) or (
                "no T1 FLAIR slice lies within half a slice of a T2 FLAIR slice.")
        if any(index is not None for index in pairs):
            t1 = np.zeros_like(t2)
            for k, index in enumerate(pairs):
                if index is None:
                    continue
                coordinates = stack_indices(t2_planes[k], t1_planes)
                resampled = map_coordinates(
                    t1_series.pixels, coordinates, order=1, mode="constant", cval=0.0
                )
                t1[k] = np.where(coordinates[0] < 0, 0.0, resampled)
                available[k] = True
            if not available.all():
                reason = f"{int((~available).sum())} T2 FLAIR slice(s) have no T1 FLAIR partner."
    return StudyVolumes(
        t2_datasets=t2_series.datasets,
        t1_datasets=t1_datasets,
        t2=t2,
        t1=t1,
        t1_available=available,
        pixel_spacing=t2_planes[0].pixel_spacing,
        slice_spacing=slice_spacing(t2_planes),
        t1_missing_reason=reason,
        t2_frames=[p.frame_number for p in t2_planes],
    )
