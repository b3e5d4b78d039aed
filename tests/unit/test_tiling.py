"""Tiled inference on a fixed-spacing grid: tiles cover every pixel, and blending them back
gives the image they came from (models.preprocessing)."""

from __future__ import annotations

import numpy as np
import pytest

from models.preprocessing import (
    blend_tiles,
    mirror_views,
    spacing_grid_shape,
    tile_starts,
    tile_weights,
    tiles_of,
)


@pytest.mark.parametrize("length", [100, 256, 257, 460, 512, 700])
def test_tiles_cover_every_pixel_and_share_at_least_the_overlap(length: int) -> None:
    starts = tile_starts(length, 256, 32)
    assert starts[0] == 0
    assert starts[-1] == max(length - 256, 0)
    for a, b in zip(starts, starts[1:], strict=False):
        assert a + 256 - b >= 32  # neighbours share at least the overlap


def test_a_fine_matrix_keeps_its_resolution_on_the_grid() -> None:
    # 512 x 0.45 mm is 230 mm: 460 pixels of 0.5 mm, not 256 of 0.9.
    assert spacing_grid_shape((512, 512), (0.45, 0.45), 0.5) == (461, 461)
    assert spacing_grid_shape((256, 256), (0.9, 0.9), 0.5) == (461, 461)
    assert spacing_grid_shape((224, 320), (1.0, 0.7), 0.5) == (448, 448)


def test_blended_tiles_give_back_the_image() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((3, 460, 300, 1)).astype(np.float32)
    tiles, places = tiles_of(image, 256, 32)
    assert tiles.shape[1:] == (256, 256, 1) and len(places) == 3 * 2 * 2
    blended = blend_tiles(tiles[..., 0], places, image.shape[:3], 32)
    np.testing.assert_allclose(blended, image[..., 0], atol=1e-5)
    # A small image is one zero-padded tile.
    small, places = tiles_of(image[:, :100, :120], 256, 32)
    assert len(places) == 3 and not small[:, 100:].any()
    weights = tile_weights(256, 32)
    assert weights.min() > 0 and weights[128, 128] == 1.0 and weights[0, 0] < 0.01


def test_mirroring_averages_over_every_combination_of_the_named_axes() -> None:
    # Batch axes (tiles, rows, cols, channels): rows are axis 1, columns axis 2.
    assert mirror_views(()) == [()]
    assert mirror_views(("columns",)) == [(), (2,)]
    assert mirror_views(("columns", "rows")) == [(), (1,), (2,), (1, 2)]
    with pytest.raises(ValueError, match="unknown mirror axes"):
        mirror_views(("slices",))
