"""The one preprocessing module: training and inference both call these functions.

Arrays are float32. Volumes are ``(slices, rows, cols)`` on the T2 FLAIR grid; model-grid
slices are ``(model_rows, model_cols)``.
"""

from __future__ import annotations

import numpy as np
from skimage.transform import resize

INTENSITY_PERCENTILE = 99.5
ROI_SIZE = 32  # pixels on the model grid, centred on a component's centroid
ROI_INPUT_SIZE = 64  # the ROI is upsampled to this before classification
ROI_GAMMA = 1.5


def normalise_volume(volume: np.ndarray) -> np.ndarray:
    """Scale a volume so its bright tissue sits near 1: divide by the 99.5th percentile of the
    foreground (voxels above 5 % of the maximum), clip to [0, 2]."""
    volume = np.asarray(volume, dtype=np.float32)
    peak = float(volume.max()) if volume.size else 0.0
    if peak <= 0:
        return np.zeros_like(volume)
    foreground = volume[volume > 0.05 * peak]
    scale = float(np.percentile(foreground, INTENSITY_PERCENTILE))
    return np.clip(volume / max(scale, 1e-6), 0.0, 2.0).astype(np.float32)


def to_model_grid(volume: np.ndarray, matrix: tuple[int, int], order: int = 1) -> np.ndarray:
    """Resize each slice of ``(slices, rows, cols)`` to ``(slices, *matrix)``."""
    slices = volume.shape[0]
    if volume.shape[1:] == tuple(matrix):
        return volume.astype(np.float32, copy=False)
    return resize(
        volume, (slices, *matrix), order=order, mode="edge", anti_aliasing=False,
        preserve_range=True,
    ).astype(np.float32)


def slice_context(volume: np.ndarray, channels: int = 1) -> np.ndarray:
    """The primary network's input: ``(slices, rows, cols)`` becomes ``(slices, rows, cols,
    channels)``, channel ``j`` of slice ``k`` holding slice ``k + j - channels // 2`` (zeros past
    either end of the stack). ``channels`` is odd: 1 is the slice alone, 3 adds each neighbour,
    which tells how far a lesion reaches through the slab (its partial volume)."""
    if channels < 1 or channels % 2 == 0:
        raise ValueError(f"context channels must be odd and positive, got {channels}")
    half = channels // 2
    padded = np.pad(np.asarray(volume, dtype=np.float32), ((half, half), (0, 0), (0, 0)))
    slices = volume.shape[0]
    return np.stack([padded[j : j + slices] for j in range(channels)], axis=-1)


def primary_input(t2: np.ndarray, matrix: tuple[int, int], context_slices: int) -> np.ndarray:
    """A T2 FLAIR volume ``(slices, rows, cols)`` as the primary network takes it: normalised,
    on the model grid, each slice with its neighbours: ``(slices, *matrix, context_slices)``."""
    return slice_context(to_model_grid(normalise_volume(t2), matrix), context_slices)


def from_model_grid(volume: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """Inverse of :func:`to_model_grid`: back to ``(slices, *shape)``."""
    return to_model_grid(volume, shape, order=order)


def extract_roi(t1_slice: np.ndarray, centre_row: float, centre_col: float) -> np.ndarray:
    """The secondary network's input for one lesion component.

    ``t1_slice`` is a normalised T1 FLAIR slice on the model grid. A ``ROI_SIZE`` square centred
    on the centroid (zero outside the image) is upsampled to ``ROI_INPUT_SIZE``, clipped to
    [0, 1] and gamma-corrected with ``ROI_GAMMA``. Returns ``(64, 64)`` float32.
    """
    half = ROI_SIZE // 2
    r0 = int(round(centre_row)) - half
    c0 = int(round(centre_col)) - half
    roi = np.zeros((ROI_SIZE, ROI_SIZE), dtype=np.float32)
    rows, cols = t1_slice.shape
    src_r0, src_c0 = max(r0, 0), max(c0, 0)
    src_r1, src_c1 = min(r0 + ROI_SIZE, rows), min(c0 + ROI_SIZE, cols)
    if src_r1 > src_r0 and src_c1 > src_c0:
        roi[src_r0 - r0 : src_r1 - r0, src_c0 - c0 : src_c1 - c0] = t1_slice[
            src_r0:src_r1, src_c0:src_c1
        ]
    upsampled = resize(
        roi, (ROI_INPUT_SIZE, ROI_INPUT_SIZE), order=1, mode="edge", anti_aliasing=False,
        preserve_range=True,
    )
    return np.power(np.clip(upsampled, 0.0, 1.0), ROI_GAMMA).astype(np.float32)
