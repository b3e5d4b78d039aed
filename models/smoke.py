"""The smoke test a model package must pass before it is registered: a built-in synthetic
case (no data files, no nilearn) with one FCI and one LACI planted, run end to end.

The case is a plain ellipse, not anatomy: a package passes when it finds both planted lesions
at their place with their class; detections elsewhere (the ellipse's rim) are not judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.inference import TwoStageEngine
from node.domain.lesions import LesionClass

SLICES, MATRIX = 8, 256
PIXEL_SPACING_MM, SLICE_SPACING_MM = (0.9, 0.9), 5.0
# (row, col, class) of each planted lesion: a 5-voxel-radius disc on slices 3 and 4.
PLANTED = ((100, 100, LesionClass.FCI), (150, 160, LesionClass.LACI))
_RADIUS, _SLICES_WITH_LESIONS, _TOLERANCE_VOXELS = 5, (3, 4), 3.0


def smoke_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """T2 FLAIR and T1 FLAIR volumes ``(slices, rows, cols)`` in arbitrary scanner units."""
    rows, cols = np.mgrid[:MATRIX, :MATRIX]
    brain = ((rows - 128) / 100.0) ** 2 + ((cols - 128) / 80.0) ** 2 <= 1
    t2 = np.where(brain, 300.0, 0.0)[np.newaxis].repeat(SLICES, axis=0)
    t1 = np.where(brain, 500.0, 0.0)[np.newaxis].repeat(SLICES, axis=0)
    for row, col, lesion_class in PLANTED:
        disc = (rows - row) ** 2 + (cols - col) ** 2 <= _RADIUS**2
        for index in _SLICES_WITH_LESIONS:
            t2[index][disc] = 700.0  # bright on T2 FLAIR
            if lesion_class is LesionClass.LACI:
                t1[index][disc] = 150.0  # dark on T1 FLAIR
    noise = np.random.default_rng(seed)
    t2 = t2 + noise.normal(0, 10, t2.shape)
    t1 = t1 + noise.normal(0, 10, t1.shape)
    return np.clip(t2, 0, None).astype(np.float32), np.clip(t1, 0, None).astype(np.float32)


@dataclass(frozen=True)
class SmokeResult:
    passed: bool
    detail: str
    lesions_found: int


def smoke_test(engine: TwoStageEngine) -> SmokeResult:
    t2, t1 = smoke_case()
    segmentation = engine.segment(t2, t1, np.ones(SLICES, bool), PIXEL_SPACING_MM,
                                  SLICE_SPACING_MM)
    if segmentation.labels.shape != t2.shape:
        return SmokeResult(False, f"label volume {segmentation.labels.shape} is not "
                                  f"{t2.shape}", len(segmentation.lesions))
    misses = []
    for row, col, lesion_class in PLANTED:
        hit = [lesion for lesion in segmentation.lesions
               if np.hypot(lesion.centroid[1] - row, lesion.centroid[2] - col) <= _TOLERANCE_VOXELS]
        if not hit:
            misses.append(f"{lesion_class} at ({row}, {col}) not found")
        elif all(lesion.lesion_class is not lesion_class for lesion in hit):
            misses.append(f"{lesion_class} at ({row}, {col}) classified "
                          f"{hit[0].lesion_class}")
    found = len(segmentation.lesions)
    if misses:
        return SmokeResult(False, "; ".join(misses), found)
    return SmokeResult(True, f"both planted lesions found with their class ({found} "
                             "detection(s) in all)", found)


def smoke_test_package(package_dir: Path) -> SmokeResult:
    """Load the package's networks (imports TensorFlow) and run :func:`smoke_test`."""
    return smoke_test(TwoStageEngine.load(package_dir))
