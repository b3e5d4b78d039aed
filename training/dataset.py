"""Training samples from synthetic subjects: primary-network crops and secondary-network ROIs.

All samples go through :mod:`models.preprocessing`, the same code the node runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.measure import label, regionprops

from models.preprocessing import extract_roi, normalise_volume, to_model_grid
from training.phantom import Contrast, axial_geometry, make_phantom, render_series


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


def primary_crops(
    subjects: list[SubjectArrays],
    rng: np.random.Generator,
    count: int,
    size: int = 128,
    lesion_fraction: float = 0.7,
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` crops ``(n, size, size, 1)`` of T2 FLAIR with binary lesion masks.

    Oversampling as in the paper: ``lesion_fraction`` of the crops contain a lesion pixel; the
    rest are anywhere in the brain. Random flips augment both.
    """
    lesion_voxels = [np.argwhere(s.labels > 0) for s in subjects]
    brain_slices = [np.flatnonzero(s.t2.reshape(len(s.t2), -1).max(axis=1) > 0.2) for s in subjects]
    images = np.zeros((count, size, size, 1), dtype=np.float32)
    masks = np.zeros((count, size, size, 1), dtype=np.float32)
    for n in range(count):
        index = int(rng.integers(len(subjects)))
        subject = subjects[index]
        rows, cols = subject.t2.shape[1:]
        if rng.random() < lesion_fraction and len(lesion_voxels[index]):
            k, r, c = lesion_voxels[index][rng.integers(len(lesion_voxels[index]))]
            r0 = int(np.clip(r - rng.integers(8, size - 8), 0, rows - size))
            c0 = int(np.clip(c - rng.integers(8, size - 8), 0, cols - size))
        else:
            k = int(rng.choice(brain_slices[index]))
            r0 = int(rng.integers(0, rows - size + 1))
            c0 = int(rng.integers(0, cols - size + 1))
        image = subject.t2[k, r0 : r0 + size, c0 : c0 + size]
        mask = (subject.labels[k, r0 : r0 + size, c0 : c0 + size] > 0).astype(np.float32)
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if rng.random() < 0.5:
            image, mask = image[::-1], mask[::-1]
        images[n, ..., 0] = image * rng.uniform(0.9, 1.1)
        masks[n, ..., 0] = mask
    return images, masks


def secondary_rois(
    subjects: list[SubjectArrays], rng: np.random.Generator, jitter_px: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """One ROI per lesion per slice (2D component), centroid jittered: ``(n, 64, 64, 1)`` and
    ``(n,)`` with 1 for LACI and 0 for FCI."""
    rois: list[np.ndarray] = []
    targets: list[int] = []
    for subject in subjects:
        for k in np.flatnonzero(subject.labels.reshape(len(subject.labels), -1).max(axis=1)):
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
