"""The one preprocessing module: training and inference both call these functions.

Arrays are float32. Volumes are ``(slices, rows, cols)`` on the T2 FLAIR grid; model-grid
slices are ``(model_rows, model_cols)``.
"""

from __future__ import annotations

import numpy as np
from skimage.transform import resize

from models.package import MIRROR_AXIS_NAMES

INTENSITY_PERCENTILE = 99.5
ROI_SIZE = 32  # pixels on the model grid, centred on a component's centroid
ROI_INPUT_SIZE = 64  # the ROI is upsampled to this before classification
ROI_GAMMA = 1.5
# The batch axis of each in-plane axis a manifest may name for test-time mirroring, in a
# primary-network batch ``(slices or tiles, rows, cols, channels)``.
MIRROR_AXES = {name: axis for axis, name in enumerate(MIRROR_AXIS_NAMES, start=1)}


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


def widening_problem(context_slices: int, widened: int) -> str | None:
    """Why a network taking ``context_slices`` slices cannot be widened to take ``widened``
    (odd, no fewer), or None if it can."""
    if widened % 2 == 0 or widened < context_slices:
        return (f"context slices must be odd and at least the source network's "
                f"{context_slices}, got {widened}")
    return None


def primary_input(t2: np.ndarray, matrix: tuple[int, int], context_slices: int) -> np.ndarray:
    """A T2 FLAIR volume ``(slices, rows, cols)`` as the primary network takes it: normalised,
    on the model grid, each slice with its neighbours: ``(slices, *matrix, context_slices)``."""
    return slice_context(to_model_grid(normalise_volume(t2), matrix), context_slices)


def from_model_grid(volume: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """Inverse of :func:`to_model_grid`: back to ``(slices, *shape)``."""
    return to_model_grid(volume, shape, order=order)


def spacing_grid_shape(shape: tuple[int, int], pixel_spacing_mm: tuple[float, float],
                       grid_spacing_mm: float) -> tuple[int, int]:
    """The in-plane matrix of a slice ``shape`` (rows, cols) at ``pixel_spacing_mm`` (between
    rows, between columns) once resampled to square pixels of ``grid_spacing_mm``: the same
    field of view at the network's own scale, whatever the scanner's matrix."""
    return (max(int(round(shape[0] * pixel_spacing_mm[0] / grid_spacing_mm)), 1),
            max(int(round(shape[1] * pixel_spacing_mm[1] / grid_spacing_mm)), 1))


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length`` pixels, neighbours sharing
    at least ``overlap``; the last tile ends at ``length``. One tile (start 0) when the image
    is no larger than a tile (it is zero-padded)."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def tile_weights(tile: int, overlap: int) -> np.ndarray:
    """``(tile, tile)`` blending weights: 1 in the middle, falling along a raised cosine over
    ``overlap`` pixels towards each edge (never 0), so that a pixel seen by several tiles
    takes most from the tile where it sits furthest from the border (where a U-Net sees its
    whole context)."""
    ramp = np.ones(tile, dtype=np.float32)
    if overlap > 0:
        edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 1) / (overlap + 1))
        ramp[:overlap] = edge
        ramp[-overlap:] = edge[::-1]
    return np.outer(ramp, ramp).astype(np.float32)


def tiles_of(batch: np.ndarray, tile: int, overlap: int
             ) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Cut ``(slices, rows, cols, channels)`` into overlapping ``tile`` squares (zero-padded
    where the image is smaller): ``(n, tile, tile, channels)`` and each tile's
    (slice, row start, col start)."""
    slices, rows, cols, channels = batch.shape
    padded = np.zeros((slices, max(rows, tile), max(cols, tile), channels), np.float32)
    padded[:, :rows, :cols] = batch
    places = [(k, r, c) for k in range(slices)
              for r in tile_starts(rows, tile, overlap) for c in tile_starts(cols, tile, overlap)]
    tiles = np.stack([padded[k, r : r + tile, c : c + tile] for k, r, c in places]) \
        if places else np.zeros((0, tile, tile, channels), np.float32)
    return tiles, places


def blend_tiles(outputs: np.ndarray, places: list[tuple[int, int, int]],
                shape: tuple[int, int, int], overlap: int) -> np.ndarray:
    """Inverse of :func:`tiles_of` for per-pixel outputs ``(n, tile, tile)``: the
    :func:`tile_weights`-weighted mean of every tile covering a pixel, ``shape`` (slices,
    rows, cols)."""
    slices, rows, cols = shape
    tile = outputs.shape[1]
    total = np.zeros((slices, max(rows, tile), max(cols, tile)), np.float32)
    weight = np.zeros_like(total)
    window = tile_weights(tile, overlap)
    for output, (k, r, c) in zip(outputs, places, strict=True):
        total[k, r : r + tile, c : c + tile] += output * window
        weight[k, r : r + tile, c : c + tile] += window
    return (total / np.maximum(weight, 1e-6))[:, :rows, :cols]


def mirror_views(mirror_axes: tuple[str, ...]) -> list[tuple[int, ...]]:
    """The batch axes of every mirrored view that test-time mirroring along ``mirror_axes``
    (names of :data:`MIRROR_AXES`) averages over: each combination of them, the image as it is
    (``()``) first; ``()`` alone when there are none. Raises ValueError on an unknown name."""
    unknown = sorted(set(mirror_axes) - set(MIRROR_AXES))
    if unknown:
        raise ValueError(f"unknown mirror axes {unknown}; known: {sorted(MIRROR_AXES)}")
    axes = sorted({MIRROR_AXES[name] for name in mirror_axes})
    views: list[tuple[int, ...]] = [()]
    for axis in axes:
        views += [(*view, axis) for view in views]
    return views


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
