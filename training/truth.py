"""The ground-truth rule, stated once for every generator (issue 22).

A voxel is lesion when at least half of it is lesion: its partial-volume fraction, sampled
through the slice profile and in-plane, is at least ``TRUTH_FRACTION`` (0.5). A lesion that never
fills half a voxel (a grazing or sub-voxel one) keeps its most-covered voxel(s), so that every
lesion a reader could see has a truth. The rule is fixed before any model is judged on it;
figures on another rule (``lesion_voxels(fraction, 0.4)``, the 0.5.x packages' truth) are
reported beside it, never instead of it.
"""

from __future__ import annotations

import numpy as np

TRUTH_FRACTION = 0.5
# The rule the 0.5.x packages were trained and judged on (2 of 5 through-slice samples),
# reported beside TRUTH_FRACTION for comparison only.
EARLIER_TRUTH_FRACTION = 0.4


def lesion_voxels(fraction: np.ndarray, truth_fraction: float = TRUTH_FRACTION) -> np.ndarray:
    """The voxels the ground truth marks for one lesion, given each voxel's fraction inside it
    (float, 0-1): those at least ``truth_fraction`` inside; a lesion with no such voxel is
    marked at its most-covered one(s); a lesion that touches no voxel is marked nowhere."""
    peak = float(fraction.max(initial=0.0))
    # float32 fractions of n samples compare with float64 thresholds: 2/5 in float32 is
    # 0.40000001 >= 0.4, and 1/2 is exact.
    if peak >= truth_fraction or peak == 0.0:
        return np.asarray(fraction >= truth_fraction)
    return np.asarray(fraction == peak)
