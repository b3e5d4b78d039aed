"""Training samples from synthetic subjects: primary-network crops and secondary-network ROIs.

All samples go through :mod:`models.preprocessing`, the same code the node runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from skimage.measure import label, regionprops

from models.preprocessing import (
    extract_roi,
    normalise_volume,
    slice_context,
    spacing_grid_shape,
    to_model_grid,
)
from node.services.volumes import StudyVolumes
from training.phantom import Contrast, axial_geometry, make_phantom, render_series, scanner_geometries


@dataclass(frozen=True)
class SubjectArrays:
    """One subject on the model grid: normalised float32 ``(slices, rows, cols)`` volumes and
    uint8 labels (0 background, 1 FCI, 2 LACI)."""

    t2: np.ndarray
    t1: np.ndarray
    labels: np.ndarray


def make_subject_arrays(seed: int, matrix: tuple[int, int] = (256, 256)) -> SubjectArrays:
    geometry = axial_geometry(matrix=256)
    phantom = make_phantom(seed, geometry)
    t2 = render_series(phantom, geometry, Contrast.T2_FLAIR)
    t1 = render_series(phantom, geometry, Contrast.T1_FLAIR, seed_offset=1)
    return SubjectArrays(
        t2=to_model_grid(normalise_volume(t2.pixels), matrix),
        t1=to_model_grid(normalise_volume(t1.pixels), matrix),
        labels=np.rint(to_model_grid(t2.labels.astype(np.float32), matrix, order=0)).astype(
            np.uint8
        ),
    )


def varied_study(seed: int, realistic: bool = False,
                 min_cnr: float = 0.0) -> tuple[StudyVolumes, np.ndarray]:
    """A subject of the richer generator (or with ``realistic`` the realistic one, with slices
    of 3-7 mm, leaving out lesions under ``min_cnr``: training only) on its own scanners
    (``scanner_geometries``), written as DICOM and read back through the node's pairing: its
    volumes and the T2 FLAIR labels."""
    import tempfile
    from pathlib import Path

    from node.services.volumes import load_study_volumes
    from training.synth import write_study

    t2_geometry, t1_geometry = scanner_geometries(
        np.random.default_rng([seed, 5]), slice_mm=(3.0, 7.0) if realistic else (3.0, 6.0))
    with tempfile.TemporaryDirectory(prefix="lacuna-varied-") as folder:
        study = write_study(Path(folder), seed, t2_geometry, t1_geometry, varied=not realistic,
                            realistic=realistic, min_cnr=min_cnr)
        volumes = load_study_volumes(study.series[Contrast.T2_FLAIR], study.series[Contrast.T1_FLAIR])
        return volumes, np.load(Path(folder) / "labels.npy")


def make_scanner_subject_arrays(seed: int, realistic: bool, grid_spacing_mm: float | None,
                                min_cnr: float = 0.0) -> SubjectArrays:
    """A subject of the realistic generator (:func:`training.phantom.make_realistic_phantom`)
    or the richer one on its own scanners, on the grid the engine puts it on: the
    fixed-spacing grid of ``grid_spacing_mm``, or (None) the 256x256 model matrix."""
    volumes, labels = varied_study(seed, realistic=realistic, min_cnr=min_cnr)
    matrix = (256, 256) if grid_spacing_mm is None else spacing_grid_shape(
        volumes.t2.shape[1:], volumes.pixel_spacing, grid_spacing_mm)
    return subject_from_volumes(volumes.t2, volumes.t1, volumes.t1_available, labels, matrix)


def subject_from_volumes(
    t2: np.ndarray, t1: np.ndarray | None, t1_available: np.ndarray, labels: np.ndarray,
    matrix: tuple[int, int] = (256, 256),
) -> SubjectArrays:
    """A study as the node reads it (T2 FLAIR, T1 FLAIR on its grid, labels on the T2 grid) put
    on the model grid as the engine does (``matrix``: the model matrix, or the fixed-spacing
    grid's): T1 FLAIR slices without a partner are zeros."""
    t1 = t1 if t1 is not None else np.zeros_like(t2)
    t1 = np.where(t1_available[:, None, None], t1, 0.0)
    return SubjectArrays(
        t2=to_model_grid(normalise_volume(t2), matrix),
        t1=to_model_grid(normalise_volume(t1), matrix),
        labels=np.rint(to_model_grid(labels.astype(np.float32), matrix, order=0)).astype(np.uint8),
    )


def _rotate(image: np.ndarray, mask: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    from scipy.ndimage import rotate

    return (rotate(image, degrees, reshape=False, order=1, mode="constant"),
            rotate(mask, degrees, reshape=False, order=0, mode="constant"))


def primary_crops(
    subjects: list[SubjectArrays],
    rng: np.random.Generator,
    count: int,
    size: int = 128,
    lesion_fraction: float = 0.7,
    rotate_lesion_crops: bool = False,
    augment: bool = True,
    by_class: bool = False,
    per_lesion: bool = False,
    intensity_jitter: float = 0.1,
    context_slices: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` crops ``(n, size, size, context_slices)`` of T2 FLAIR (the slice and its
    neighbours, as :func:`models.preprocessing.slice_context` gives them) with lesion masks
    ``(n, size, size, 1)`` of the middle slice: binary, or with ``by_class`` the class labels
    (1 FCI, 2 LACI).

    Oversampling as in the paper: ``lesion_fraction`` of the crops contain a lesion pixel; the
    rest are anywhere in the brain (0: no oversampling). ``augment``: random flips and intensity
    scaled by 1 +- ``intensity_jitter`` (uniform); with ``rotate_lesion_crops`` the lesion-rich
    crops are also rotated 5-10 degrees either way (the paper's augmentation). A lesion-rich
    crop is centred near a lesion voxel drawn uniformly, so large lesions get most crops;
    ``per_lesion`` draws the lesion (3D component) uniformly first, so the smallest lesions get
    as many as the largest.
    """
    lesion_voxels = [np.argwhere(s.labels > 0) for s in subjects]
    lesions = [[region.coords for region in regionprops(label(s.labels > 0, connectivity=3))]
               for s in subjects] if per_lesion else []
    brain_slices = [np.flatnonzero(s.t2.reshape(len(s.t2), -1).max(axis=1) > 0.2) for s in subjects]
    half = context_slices // 2
    images = np.zeros((count, size, size, context_slices), dtype=np.float32)
    masks = np.zeros((count, size, size, 1), dtype=np.float32)
    for n in range(count):
        index = int(rng.integers(len(subjects)))
        subject = subjects[index]
        rows, cols = subject.t2.shape[1:]
        rich = rng.random() < lesion_fraction and len(lesion_voxels[index]) > 0
        if rich:
            voxels = (lesions[index][rng.integers(len(lesions[index]))] if per_lesion
                      else lesion_voxels[index])
            k, r, c = voxels[rng.integers(len(voxels))]
            r0 = int(np.clip(r - rng.integers(8, size - 8), 0, rows - size))
            c0 = int(np.clip(c - rng.integers(8, size - 8), 0, cols - size))
        else:
            k = int(rng.choice(brain_slices[index]))
            r0 = int(rng.integers(0, rows - size + 1))
            c0 = int(rng.integers(0, cols - size + 1))
        # Slice k's context from the few slices around it, not from the whole subject's
        # (a copy of every volume, context_slices times over).
        image = slice_context(subject.t2[max(k - half, 0) : k + half + 1], context_slices)[
            min(k, half), r0 : r0 + size, c0 : c0 + size]
        crop = subject.labels[k, r0 : r0 + size, c0 : c0 + size]
        mask = (crop if by_class else crop > 0).astype(np.float32)
        if augment:
            if rich and rotate_lesion_crops:
                image, mask = _rotate(image, mask, float(rng.uniform(5, 10) * rng.choice([-1, 1])))
            if rng.random() < 0.5:
                image, mask = image[:, ::-1], mask[:, ::-1]
            if rng.random() < 0.5:
                image, mask = image[::-1], mask[::-1]
            image = image * rng.uniform(1 - intensity_jitter, 1 + intensity_jitter)
        images[n] = image
        masks[n, ..., 0] = mask
    return images, masks


def secondary_rois(
    subjects: list[SubjectArrays], rng: np.random.Generator, jitter_px: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """One ROI per lesion per slice (2D component), centroid jittered: ``(n, 64, 64, 1)`` and
    ``(n,)`` with 1 for LACI and 0 for FCI. Slices without T1 FLAIR (all zeros: no partner)
    give none, as the engine classifies nothing there."""
    rois: list[np.ndarray] = []
    targets: list[int] = []
    for subject in subjects:
        for k in np.flatnonzero(subject.labels.reshape(len(subject.labels), -1).max(axis=1)):
            if not subject.t1[k].any():
                continue
            for region in regionprops(label(subject.labels[k] > 0)):
                row, col = region.centroid
                lesion_class = int(np.bincount(subject.labels[k][tuple(region.coords.T)]).argmax())
                for _ in range(3):
                    jitter = rng.uniform(-jitter_px, jitter_px, 2)
                    roi = extract_roi(subject.t1[k], row + jitter[0], col + jitter[1])
                    if rng.random() < 0.5:
                        roi = roi[:, ::-1]
                    rois.append(roi)
                    targets.append(1 if lesion_class == 2 else 0)
    return (
        np.asarray(rois, dtype=np.float32)[..., np.newaxis],
        np.asarray(targets, dtype=np.float32),
    )


def secondary_rois_from_primary(
    subjects: list[SubjectArrays], predict: Callable[[np.ndarray], np.ndarray],
    rng: np.random.Generator, threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """ROIs where the trained primary network finds lesions, as inference takes them (the
    paper trains the secondary network this way): one per predicted 3D component per slice,
    at its in-slice centroid, labelled with the true class under it; predicted components
    that cover no true lesion are left out. ``predict`` maps a subject's T2 FLAIR ``(n, rows,
    cols)`` on the model grid to lesion probability of the same shape."""
    rois: list[np.ndarray] = []
    targets: list[int] = []
    for subject in subjects:
        probability = predict(subject.t2)
        for region in regionprops(label(probability >= threshold, connectivity=2)):
            coords = region.coords
            truth = subject.labels[tuple(coords.T)]
            truth = truth[truth > 0]
            if not truth.size:
                continue
            lesion_class = int(np.bincount(truth).argmax())
            for k in np.unique(coords[:, 0]):
                if not subject.t1[k].any():  # no T1 FLAIR partner: the engine skips it too
                    continue
                in_slice = coords[coords[:, 0] == k]
                roi = extract_roi(subject.t1[k], in_slice[:, 1].mean(), in_slice[:, 2].mean())
                if rng.random() < 0.5:
                    roi = roi[:, ::-1]
                rois.append(roi)
                targets.append(1 if lesion_class == 2 else 0)
    return (np.asarray(rois, dtype=np.float32).reshape(-1, 64, 64, 1),
            np.asarray(targets, dtype=np.float32))
