"""A picture of a result for people who would rather look than read: the T2 FLAIR slices
with lesions, each lesion outlined in its class colour, in one PNG montage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from skimage.measure import label, regionprops
from skimage.segmentation import find_boundaries

# Outline colours (RGB) by lesion class, as in the legend.
COLOURS = {"FCI": (255, 210, 0), "LACI": (255, 40, 40), "UNCLASSIFIED": (0, 200, 255)}
HEADER = 44  # pixels of text above the tiles
CAPTION = 16  # pixels of text under each tile


@dataclass(frozen=True)
class RenderInput:
    """``image`` float ``(slices, rows, cols)``; ``masks`` class name -> bool array of the
    same shape; ``title`` the first header line."""

    image: np.ndarray
    masks: dict[str, np.ndarray]
    title: str


def brain_window(image: np.ndarray) -> tuple[float, float]:
    """(low, high): the 1st and 99.5th percentiles of the brain (non-zero) values."""
    values = image[image > 0]
    low, high = (np.percentile(values, (1, 99.5)) if values.size else (0.0, 1.0))
    return float(low), float(high)


def window_to_uint8(image: np.ndarray) -> np.ndarray:
    """Window to :func:`brain_window`, as uint8."""
    low, high = brain_window(image)
    scaled = np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0)
    return np.asarray(scaled * 255, dtype=np.uint8)


def montage(data: RenderInput, columns: int = 4, max_tiles: int = 16) -> Image.Image:
    """Tiles of the slices with lesions (or, for a negative study, three middle slices), each
    with its lesion outlines and a ring around each lesion, a caption, and a header naming the
    model and the legend."""
    lesion_slices = sorted({int(k) for mask in data.masks.values() for k in np.nonzero(
        mask.any(axis=(1, 2)))[0]})
    slices = data.image.shape[0]
    chosen = lesion_slices[:max_tiles] or sorted({slices // 2 - 1, slices // 2, slices // 2 + 1}
                                                 & set(range(slices)))
    rows, cols = data.image.shape[1:]
    grid_columns = min(columns, len(chosen))
    grid_rows = -(-len(chosen) // grid_columns)
    canvas = Image.new("RGB", (grid_columns * cols, HEADER + grid_rows * (rows + CAPTION)))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), data.title, fill=(255, 255, 255))
    draw.text((4, 16), "synthetic model, not for clinical use", fill=(255, 120, 120))
    present = [name for name in COLOURS if name in data.masks and data.masks[name].any()]
    if not present:
        draw.text((4, 30), "no lesion found", fill=(200, 200, 200))
    for index, name in enumerate(present):  # the legend: each class in its outline colour
        draw.text((4 + 110 * index, 30), f"{name} outline", fill=COLOURS[name])
    grey = window_to_uint8(data.image)
    for tile, k in enumerate(chosen):
        rgb = np.repeat(grey[k][..., np.newaxis], 3, axis=2)
        for name, mask in data.masks.items():
            rgb[find_boundaries(mask[k], mode="outer")] = COLOURS.get(name, (255, 255, 255))
        x, y = (tile % grid_columns) * cols, HEADER + (tile // grid_columns) * (rows + CAPTION)
        canvas.paste(Image.fromarray(rgb), (x, y))
        for name, mask in data.masks.items():  # a ring around each lesion: tiny ones show too
            for region in regionprops(label(mask[k])):
                cy, cx = region.centroid
                radius = max(10.0, region.axis_major_length)
                draw.ellipse((x + cx - radius, y + cy - radius, x + cx + radius, y + cy + radius),
                             outline=COLOURS.get(name, (255, 255, 255)))
        draw.text((x + 4, y + rows + 2), f"slice {k + 1} of {slices}", fill=(220, 220, 220))
    return canvas


def write_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
