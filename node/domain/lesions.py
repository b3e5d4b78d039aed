"""Lesions as the node reports them: the two classes of the paper, the label values of a lesion
map, and one connected component's measurements."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class LesionClass(StrEnum):
    FCI = "FCI"  # focal cerebral ischemia: bright on T2 FLAIR, iso on T1 FLAIR
    LACI = "LACI"  # lacunar infarction: bright on T2 FLAIR, dark on T1 FLAIR
    UNCLASSIFIED = "UNCLASSIFIED"  # no T1 FLAIR at the lesion's slices


LABEL_VALUES: dict[LesionClass, int] = {
    LesionClass.FCI: 1,
    LesionClass.LACI: 2,
    LesionClass.UNCLASSIFIED: 3,
}


@dataclass(frozen=True)
class Lesion:
    """One 3D connected component. ``slices`` index the T2 FLAIR stack in normal order."""

    number: int
    lesion_class: LesionClass
    laci_probability: float | None
    voxel_count: int
    volume_mm3: float
    largest_area_mm2: float
    slices: tuple[int, ...]
    centroid: tuple[float, float, float]  # (slice, row, col) in voxels
    largest_diameter_mm: float  # the longest in-plane extent on any slice (see in_plane_diameter_mm)

    @property
    def class_probability(self) -> float | None:
        """The secondary network's probability of the class it gave (None if unclassified)."""
        if self.laci_probability is None or self.lesion_class is LesionClass.UNCLASSIFIED:
            return None
        p = self.laci_probability
        return p if self.lesion_class is LesionClass.LACI else 1.0 - p


@dataclass(frozen=True)
class LesionSegmentation:
    """``labels`` holds :data:`LABEL_VALUES`; ``lesion_numbers`` holds each voxel's lesion."""

    labels: np.ndarray
    lesion_numbers: np.ndarray
    lesions: tuple[Lesion, ...]
