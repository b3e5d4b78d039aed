"""Synthetic brain MR phantoms with FCI and LACI lesions, built from real anatomy.

Anatomy comes from the MNI152 2009 grey and white matter probability maps that nilearn ships
inside its package (they load offline); CSF is the brain mask minus GM and WM. Each subject gets
its own affine deformation, tissue contrasts, bias field and noise. Lesions are ellipsoids of
2-15 mm in white matter, placed in patient coordinates so that series with different geometry
see the same lesions.

Conventions: patient coordinates are DICOM LPS in mm; arrays are ``(slices, rows, cols)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from functools import lru_cache

import numpy as np
from scipy.ndimage import map_coordinates


class Contrast(StrEnum):
    T2_FLAIR = "T2_FLAIR"
    T1_FLAIR = "T1_FLAIR"


# Mean signal of each tissue before per-subject variation (arbitrary units, WM ~ 0.5-0.8).
TISSUE_SIGNAL: dict[Contrast, dict[str, float]] = {
    Contrast.T2_FLAIR: {"csf": 0.07, "gm": 0.62, "wm": 0.46, "lesion": 1.0},
    # T1 FLAIR: WM brighter than GM; FCI iso to WM; LACI has a CSF-like dark core.
    Contrast.T1_FLAIR: {"csf": 0.10, "gm": 0.50, "wm": 0.78, "lesion": 0.17},
}
STORED_SCALE = 1800.0  # signal 1.0 -> stored value; BitsStored 12
LESION_LABELS = {"FCI": 1, "LACI": 2}


@dataclass(frozen=True)
class StackGeometry:
    """An axial-ish stack of parallel slices as a scanner writes it.

    ``pixel_spacing`` is DICOM PixelSpacing: (between rows, between columns) in mm.
    ``origin`` is ImagePositionPatient of slice 0; slice k sits at origin + k*spacing*normal.
    """

    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    slice_thickness: float
    slices: int
    row_cosine: tuple[float, float, float]
    column_cosine: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def normal(self) -> np.ndarray:
        return np.cross(np.asarray(self.row_cosine), np.asarray(self.column_cosine))

    def position(self, index: int) -> np.ndarray:
        return np.asarray(self.origin) + index * self.slice_spacing * self.normal

    def world(
        self, offsets_mm: float = 0.0, box: tuple[slice, slice, slice] | None = None
    ) -> np.ndarray:
        """Patient coordinates of pixel centres: ``(slices, rows, cols, 3)``, or of the voxels
        in ``box`` only. ``offsets_mm`` shifts every point along the normal."""
        box = box or (slice(0, self.slices), slice(0, self.rows), slice(0, self.columns))
        k = np.arange(box[0].start, box[0].stop)[:, None, None, None]
        r = np.arange(box[1].start, box[1].stop)[None, :, None, None]
        c = np.arange(box[2].start, box[2].stop)[None, None, :, None]
        return (
            np.asarray(self.origin)
            + (k * self.slice_spacing + offsets_mm) * self.normal
            + c * self.pixel_spacing[1] * np.asarray(self.row_cosine)
            + r * self.pixel_spacing[0] * np.asarray(self.column_cosine)
        )


def axial_geometry(
    matrix: int = 256,
    fov_mm: float = 230.0,
    slices: int = 24,
    slice_spacing: float = 5.0,
    slice_thickness: float | None = None,
    centre: tuple[float, float, float] = (0.0, 18.0, 14.0),
    tilt_deg: float = 0.0,
) -> StackGeometry:
    """A transverse stack centred on ``centre`` (LPS mm; the default is the MNI brain's middle),
    tilted by ``tilt_deg`` about the left-right axis as an AC-PC aligned protocol is."""
    spacing = fov_mm / matrix
    tilt = np.radians(tilt_deg)
    row = np.array([1.0, 0.0, 0.0])
    column = np.array([0.0, np.cos(tilt), np.sin(tilt)])
    normal = np.cross(row, column)
    first = tuple(float(v) for v in (
        np.asarray(centre) - (fov_mm / 2 - spacing / 2) * (row + column)
        - (slices - 1) * slice_spacing / 2 * normal))
    return StackGeometry(
        rows=matrix,
        columns=matrix,
        pixel_spacing=(spacing, spacing),
        slice_spacing=slice_spacing,
        slice_thickness=slice_thickness or slice_spacing,
        slices=slices,
        row_cosine=(1.0, 0.0, 0.0),
        column_cosine=(0.0, float(column[1]), float(column[2])),
        origin=first,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class PhantomLesion:
    """A ground-truth lesion: an ellipsoid in patient coordinates (mm)."""

    number: int
    lesion_class: str  # "FCI" or "LACI"
    centre: tuple[float, ...]  # (x, y, z)
    radii: tuple[float, ...]  # along the three ellipsoid axes
    rotation: tuple[tuple[float, ...], ...]  # 3x3, columns are the ellipsoid axes
    # Irregular outline: the ellipsoid's radius along unit direction u is scaled by
    # 1 + sum(w * (u . d)**3) over these (dx, dy, dz, w) terms; empty: a plain ellipsoid.
    bumps: tuple[tuple[float, float, float, float], ...] = ()


@dataclass(frozen=True)
class SubjectAnatomy:
    """Per-subject variation: where MNI space sits in the scanner, and tissue contrasts."""

    matrix: np.ndarray  # 3x3, patient RAS mm -> MNI RAS mm (about ``centre``)
    shift: np.ndarray  # MNI RAS mm
    signal_scale: dict[str, float]
    noise_sigma: float
    bias_coefficients: np.ndarray  # 4 terms: constant, x, y, z (per 100 mm)


@dataclass(frozen=True)
class Phantom:
    """One synthetic subject: anatomy, lesions and the random state that made them."""

    anatomy: SubjectAnatomy
    lesions: tuple[PhantomLesion, ...]
    seed: int


@dataclass(frozen=True)
class SeriesImage:
    """Pixels of one rendered series: ``pixels`` uint16 ``(slices, rows, cols)``; ``labels``
    uint8 with :data:`LESION_LABELS` values (0 = background)."""

    geometry: StackGeometry
    pixels: np.ndarray
    labels: np.ndarray


@lru_cache(maxsize=1)
def _mni_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(gm, wm, csf, voxel-from-RAS matrix 4x4), float32, from nilearn's bundled templates."""
    from nilearn.datasets import (
        load_mni152_brain_mask,
        load_mni152_gm_template,
        load_mni152_wm_template,
    )

    gm_image = load_mni152_gm_template(resolution=1)
    gm = np.asarray(gm_image.get_fdata(), dtype=np.float32)
    wm = np.asarray(load_mni152_wm_template(resolution=1).get_fdata(), dtype=np.float32)
    mask = np.asarray(load_mni152_brain_mask(resolution=1).get_fdata(), dtype=np.float32)
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    return gm, wm, csf, np.linalg.inv(gm_image.affine)


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class AnatomyRanges:
    """How far subjects vary: head rotation (degrees), size scale, shift (mm), tissue signal
    scale, noise sigma and bias-field slope, each drawn uniformly from +-value or the range."""

    rotation_deg: float = 6.0
    scale: tuple[float, float] = (0.93, 1.07)
    shift_mm: float = 4.0
    signal: tuple[float, float] = (0.92, 1.08)
    noise: tuple[float, float] = (0.012, 0.03)
    bias: float = 0.12


# The richer generator: rotation up to 10 degrees, 12 % size, contrast +-15 %, noise 1-5 % of
# white matter, a stronger bias field.
VARIED_ANATOMY = AnatomyRanges(rotation_deg=10.0, scale=(0.88, 1.12), shift_mm=8.0,
                               signal=(0.85, 1.15), noise=(0.01, 0.05), bias=0.25)


def sample_anatomy(rng: np.random.Generator, ranges: AnatomyRanges = AnatomyRanges()) -> SubjectAnatomy:
    return SubjectAnatomy(
        matrix=_rotation(np.radians(rng.uniform(-ranges.rotation_deg, ranges.rotation_deg, 3)))
        @ np.diag(rng.uniform(*ranges.scale, 3)),
        shift=rng.uniform(-ranges.shift_mm, ranges.shift_mm, 3),
        signal_scale={tissue: float(rng.uniform(*ranges.signal)) for tissue in ("csf", "gm", "wm")},
        noise_sigma=float(rng.uniform(*ranges.noise)),
        bias_coefficients=np.concatenate([[0.0], rng.uniform(-ranges.bias, ranges.bias, 3)]),
    )


def tissue_maps(
    anatomy: SubjectAnatomy, points_lps: np.ndarray, only_wm: bool = False
) -> np.ndarray:
    """GM, WM, CSF probabilities at patient points ``(..., 3)``; returns ``(3, ...)``, or
    ``(1, ...)`` with WM alone."""
    gm, wm, csf, voxel_from_ras = _mni_maps()
    ras = points_lps * np.array([-1.0, -1.0, 1.0])
    mni = ras @ anatomy.matrix.T + anatomy.shift
    voxel = mni @ voxel_from_ras[:3, :3].T + voxel_from_ras[:3, 3]
    coordinates = np.moveaxis(voxel, -1, 0).reshape(3, -1)
    maps = [
        map_coordinates(volume, coordinates, order=1, mode="constant", cval=0.0).reshape(
            points_lps.shape[:-1]
        )
        for volume in ((wm,) if only_wm else (gm, wm, csf))
    ]
    return np.stack(maps).astype(np.float32)


def place_lesions(
    rng: np.random.Generator,
    anatomy: SubjectAnatomy,
    geometry: StackGeometry,
    count: int,
    diameter_range_mm: tuple[float, float] = (2.5, 15.0),
) -> tuple[PhantomLesion, ...]:
    """Put ``count`` lesions in deep white matter, centred within 1 mm of a slice centre of
    ``geometry`` so each one is visible on at least one slice, never touching each other."""
    world = geometry.world()
    wm = tissue_maps(anatomy, world, only_wm=True)[0]
    candidates = np.argwhere(wm > 0.93)
    lesions: list[PhantomLesion] = []
    attempts = 0
    while len(lesions) < count and attempts < 400 and len(candidates):
        attempts += 1
        k, r, c = candidates[rng.integers(len(candidates))]
        # Log-uniform diameters: small lesions are the common ones.
        diameter = float(np.exp(rng.uniform(*np.log(diameter_range_mm))))
        radii = tuple(
            float(v) for v in diameter / 2 * rng.uniform(0.75, 1.25, 3)
        )
        centre = world[k, r, c] + rng.uniform(-1.0, 1.0) * geometry.normal
        if any(
            np.linalg.norm(centre - np.asarray(other.centre))
            < max(radii) + max(other.radii) + 3.0
            for other in lesions
        ):
            continue
        # Keep lesions inside white matter: WM probability at points on the ellipsoid's shell.
        directions = rng.normal(size=(24, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        shell = centre + directions * np.asarray(radii) * 0.9
        if tissue_maps(anatomy, shell, only_wm=True)[0].mean() < 0.6:
            continue
        lesions.append(
            PhantomLesion(
                number=len(lesions) + 1,
                lesion_class=str(rng.choice(["FCI", "LACI"])),
                centre=tuple(float(v) for v in centre),
                radii=radii,
                rotation=tuple(
                    tuple(float(v) for v in row)
                    for row in _rotation(rng.uniform(0, np.pi, 3))
                ),
            )
        )
    return tuple(lesions)


def make_phantom(
    seed: int,
    geometry: StackGeometry,
    lesion_count: int | None = None,
    varied: bool = False,
) -> Phantom:
    """A subject with its anatomy and lesions; ``lesion_count`` None draws 1-8. ``varied``
    widens the anatomy, contrast and noise ranges and makes lesion outlines irregular (the
    richer generator); without it every draw is as it always was, seed for seed."""
    rng = np.random.default_rng(seed)
    anatomy = sample_anatomy(rng, VARIED_ANATOMY if varied else AnatomyRanges())
    count = int(rng.integers(1, 9)) if lesion_count is None else lesion_count
    lesions = place_lesions(rng, anatomy, geometry, count)
    if varied:
        lesions = tuple(replace(lesion, bumps=_bumps(rng)) for lesion in lesions)
    return Phantom(anatomy=anatomy, lesions=lesions, seed=seed)


def _bumps(rng: np.random.Generator) -> tuple[tuple[float, float, float, float], ...]:
    directions = rng.normal(size=(3, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    weights = rng.uniform(0.15, 0.45, 3)
    return tuple((float(d[0]), float(d[1]), float(d[2]), float(w))
                 for d, w in zip(directions, weights, strict=True))


def scanner_geometries(rng: np.random.Generator) -> tuple[StackGeometry, StackGeometry]:
    """A T2 FLAIR and a T1 FLAIR stack as different scanners and protocols write them:
    in-plane 0.45-1.0 mm (matrix 224-512 over a 220-250 mm field of view), 3-6 mm slices
    (with a gap of up to 1 mm), tilted up to 12 degrees about the left-right axis; the T1 FLAIR
    with its own matrix and slice spacing, covering the same brain."""

    def one(tilt: float) -> StackGeometry:
        fov = float(rng.uniform(220, 250))
        matrix = int(np.clip(round(fov / rng.uniform(0.45, 1.0) / 16) * 16, 224, 512))
        spacing = float(rng.uniform(3.0, 6.0))
        thickness = spacing - float(rng.uniform(0.0, min(1.0, spacing - 3.0)))
        return axial_geometry(matrix=matrix, fov_mm=fov, slices=int(round(125 / spacing)),
                              slice_spacing=spacing, slice_thickness=thickness, tilt_deg=tilt)

    tilt = float(rng.uniform(-12, 12))
    return one(tilt), one(tilt + float(rng.uniform(-2, 2)))


# A voxel is lesion when at least this fraction of it is inside the lesion: 2 of the 5
# through-slice samples, where partial volume still shows it as a dot (see lesion_voxels).
# 2/5 in float32 rounds up (0.40000001), so it compares >= this float64 0.4.
TRUTH_FRACTION = 0.4


def _lesion_fraction(
    lesion: PhantomLesion, geometry: StackGeometry, shrink: float = 1.0, samples: int = 5
) -> np.ndarray:
    """Partial-volume fraction of each voxel inside the (shrunk, possibly bumpy) ellipsoid,
    sampled through the slice thickness."""
    fraction = np.zeros((geometry.slices, geometry.rows, geometry.columns), dtype=np.float32)
    rotation = np.asarray(lesion.rotation)
    radii = np.asarray(lesion.radii) * shrink
    # Bumps reach past the ellipsoid by up to the sum of their weights.
    reach = 1.0 + sum(w for *_, w in lesion.bumps)
    box = _bounding_box(geometry, np.asarray(lesion.centre), float(radii.max()) * reach)
    if box is None:
        return fraction
    offsets = (np.arange(samples) + 0.5) / samples - 0.5
    for offset in offsets * geometry.slice_thickness:
        relative = geometry.world(offset, box) - np.asarray(lesion.centre)
        local = relative @ rotation / radii
        limit: np.ndarray | float = 1.0
        if lesion.bumps:
            unit = relative / np.maximum(np.linalg.norm(relative, axis=-1, keepdims=True), 1e-6)
            limit = np.maximum(1.0 + sum(w * (unit @ np.array([dx, dy, dz])) ** 3
                                         for dx, dy, dz, w in lesion.bumps), 0.3) ** 2
        fraction[box] += (np.sum(local * local, axis=-1) <= limit).astype(np.float32)
    return fraction / samples


def lesion_voxels(fraction: np.ndarray) -> np.ndarray:
    """The voxels the ground truth marks for one lesion, given each voxel's fraction inside it:
    those at least ``TRUTH_FRACTION`` inside, every lesion alike; a lesion with no such voxel
    (none in the validation and held-out seeds) is marked at its most-covered ones.

    One local rule, so that two dots that look alike are labelled alike: with "half inside"
    (0.5, before 2026-12-01) a 5-7 voxel dot at 0.4 was marked whole by the fallback while a
    dot with one voxel at 0.6 in a 0.4 ring was marked at that voxel alone."""
    peak = float(fraction.max(initial=0.0))
    if peak >= TRUTH_FRACTION or peak == 0.0:
        return fraction >= TRUTH_FRACTION
    return fraction == peak


def _bounding_box(
    geometry: StackGeometry, centre: np.ndarray, radius: float
) -> tuple[slice, slice, slice] | None:
    """Index ranges of the voxels within ``radius`` (+ one voxel) of ``centre``; None if off
    the stack."""
    relative = centre - np.asarray(geometry.origin)
    index = np.array(
        [
            relative @ geometry.normal / geometry.slice_spacing,
            relative @ np.asarray(geometry.column_cosine) / geometry.pixel_spacing[0],
            relative @ np.asarray(geometry.row_cosine) / geometry.pixel_spacing[1],
        ]
    )
    reach = (
        radius + geometry.slice_thickness / 2
    ) / np.array([geometry.slice_spacing, *geometry.pixel_spacing]) + 1
    size = (geometry.slices, geometry.rows, geometry.columns)
    bounds = [
        (max(int(np.floor(i - d)), 0), min(int(np.ceil(i + d)) + 1, n))
        for i, d, n in zip(index, reach, size, strict=True)
    ]
    if any(low >= high for low, high in bounds):
        return None
    return (slice(*bounds[0]), slice(*bounds[1]), slice(*bounds[2]))


def render_series(
    phantom: Phantom, geometry: StackGeometry, contrast: Contrast, seed_offset: int = 0
) -> SeriesImage:
    """Pixels and ground-truth labels of one series. Labels mark each lesion's voxels as
    ``lesion_voxels`` says."""
    rng = np.random.default_rng(phantom.seed * 1000 + 17 + seed_offset)
    anatomy = phantom.anatomy
    world = geometry.world()
    gm, wm, csf = tissue_maps(anatomy, world)
    signal = TISSUE_SIGNAL[contrast]
    image = (
        gm * signal["gm"] * anatomy.signal_scale["gm"]
        + wm * signal["wm"] * anatomy.signal_scale["wm"]
        + csf * signal["csf"] * anatomy.signal_scale["csf"]
    )
    labels = np.zeros(image.shape, dtype=np.uint8)
    wm_level = signal["wm"] * anatomy.signal_scale["wm"]
    for lesion in phantom.lesions:
        fraction = _lesion_fraction(lesion, geometry)
        labels[lesion_voxels(fraction)] = LESION_LABELS[lesion.lesion_class]
        if contrast is Contrast.T2_FLAIR:
            brightness = signal["lesion"] * float(rng.uniform(0.9, 1.15))
            image = image * (1 - fraction) + fraction * brightness
        elif lesion.lesion_class == "FCI":
            # Iso on T1 FLAIR: the lesion takes the white-matter signal.
            image = image * (1 - fraction) + fraction * wm_level * float(rng.uniform(0.95, 1.02))
        else:
            core = _lesion_fraction(lesion, geometry, shrink=0.8)
            image = image * (1 - fraction) + fraction * wm_level * 0.9
            image = image * (1 - core) + core * signal["lesion"]
    # Smooth multiplicative bias field, then Rician noise.
    centred = (world - world.reshape(-1, 3).mean(axis=0)) / 100.0
    c = anatomy.bias_coefficients
    bias = np.exp(c[0] + centred[..., 0] * c[1] + centred[..., 1] * c[2] + centred[..., 2] * c[3])
    image = image * bias
    sigma = anatomy.noise_sigma
    noisy = np.sqrt(
        (image + rng.normal(0, sigma, image.shape)) ** 2 + rng.normal(0, sigma, image.shape) ** 2
    )
    pixels = np.clip(np.round(noisy * STORED_SCALE), 0, 4095).astype(np.uint16)
    return SeriesImage(geometry=geometry, pixels=pixels, labels=labels)
