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

from training.truth import lesion_voxels


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
    # More ellipsoids (same axes) whose union with the first is the lesion: (dx, dy, dz) mm from
    # ``centre`` and a scale of ``radii``. Overlapping blobs in a row: an elongated, lobulated
    # lesion along a white-matter tract.
    blobs: tuple[tuple[float, float, float, float], ...] = ()
    # T2 FLAIR signal as a multiple of the surrounding white matter's (realistic generator);
    # None: the first generator's fixed bright signal.
    t2_contrast: float | None = None
    # A LACI with a CSF-like core and a bright rim on T2 FLAIR (realistic generator).
    cavitated: bool = False


@dataclass(frozen=True)
class SubjectAnatomy:
    """Per-subject variation: where MNI space sits in the scanner, and tissue contrasts."""

    matrix: np.ndarray  # 3x3, patient RAS mm -> MNI RAS mm (about ``centre``)
    shift: np.ndarray  # MNI RAS mm
    signal_scale: dict[str, float]
    noise_sigma: float
    bias_coefficients: np.ndarray  # 4 terms: constant, x, y, z (per 100 mm)


@dataclass(frozen=True)
class Mimic:
    """A structure that looks like a lesion on some slice but is none, and is never labelled
    (realistic generator): ``kind`` "pvs" (perivascular space: CSF signal, a thin tube),
    "flow" (a bright FLAIR flow artefact in CSF), "vessel" (a thin flow void). ``shape`` is an
    ellipsoid with the lesion's conventions; ``signal`` is a multiple of white matter on both
    FLAIR contrasts (T1 FLAIR: ``t1_signal``)."""

    kind: str
    shape: PhantomLesion
    signal: float
    t1_signal: float


def _midpoints(count: int) -> np.ndarray:
    """``count`` equal parts' midpoints over -0.5..0.5 (sampling a voxel or a profile)."""
    return (np.arange(count) + 0.5) / count - 0.5


@dataclass(frozen=True)
class SliceProfile:
    """A 2D acquisition's through-slice sensitivity in units of the slice thickness ``u``:
    a Fermi edge, ``1 / (1 + exp((|u| - half_width) / edge))``, so that each image voxel
    sees a little of the slab beside it and less than all of its own edges, as a real
    selective pulse gives. ``edge`` near 0 is the nominal box; about 0.2 is close to a
    Gaussian of FWHM ``2 * half_width``. The truth never uses it: a voxel's partial volume
    is always its nominal box (:mod:`training.truth`)."""

    half_width: float
    edge: float

    def samples(self, count: int = 16, reach: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
        """(offsets along the normal in thicknesses, weights summing to 1): ``count``
        midpoints over ``-reach..reach``."""
        offsets = _midpoints(count) * 2 * reach
        weights = 1.0 / (1.0 + np.exp((np.abs(offsets) - self.half_width)
                                      / max(self.edge, 1e-3)))
        return offsets, weights / weights.sum()


FWHM_PER_SIGMA = 2.0 * float(np.sqrt(2.0 * np.log(2.0)))  # of a Gaussian


@dataclass(frozen=True)
class InPlaneResolution:
    """How sharp a reconstructed slice is in-plane. A scanner acquires ``acquired_mm`` voxels
    (never finer than the pixels it writes: a finer display matrix is zero-filled k-space)
    and apodises k-space, which widens the point spread by ``apodisation``; the result is
    modelled as a Gaussian of FWHM ``apodisation * max(acquired_mm, pixel spacing)`` applied
    to the complex signal and noise before the magnitude, so edges spread over more than a
    pixel and neighbouring pixels' noise is correlated. The truth never uses it."""

    acquired_mm: float
    apodisation: float

    def sigma_px(self, pixel_spacing: tuple[float, float]) -> tuple[float, float]:
        """The Gaussian's standard deviation along rows and columns, in pixels, for
        ``pixel_spacing`` (between rows, between columns; mm)."""
        def sigma(spacing: float) -> float:
            return self.apodisation * max(self.acquired_mm, spacing) / FWHM_PER_SIGMA / spacing

        return sigma(pixel_spacing[0]), sigma(pixel_spacing[1])

    def spread(self, geometry: StackGeometry) -> tuple[float, float, float]:
        """The Gaussian's sigmas over a ``(slices, rows, columns)`` volume on ``geometry``, in
        voxels: none across slices (the slice profile is the through-plane blur)."""
        return (0.0, *self.sigma_px(geometry.pixel_spacing))


@dataclass(frozen=True)
class Phantom:
    """One synthetic subject: anatomy, lesions and the random state that made them. The
    realistic generator (:func:`make_realistic_phantom`) adds look-alikes that are not lesions:
    ``mimics``, bright periventricular caps and rims (``cap_strength``, a multiple of white
    matter added at most), and bright noise speckles (``speckles`` per slice)."""

    anatomy: SubjectAnatomy
    lesions: tuple[PhantomLesion, ...]
    seed: int
    mimics: tuple[Mimic, ...] = ()
    cap_strength: float = 0.0
    speckles: float = 0.0
    stored_scale: float = 1.0  # multiplies STORED_SCALE: each scanner's own value range
    in_plane_samples: int = 1  # partial volume across each pixel too (realistic: 2 x 2)
    slice_profile: SliceProfile | None = None  # None: the image's partial volume is the box
    in_plane_resolution: InPlaneResolution | None = None  # None: each pixel is its own sample


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


def mni_points(anatomy: SubjectAnatomy, points_lps: np.ndarray) -> np.ndarray:
    """Where patient points ``(..., 3)`` (LPS mm) of this subject fall in MNI space (RAS mm)."""
    return (points_lps * np.array([-1.0, -1.0, 1.0])) @ anatomy.matrix.T + anatomy.shift


def tissue_maps(
    anatomy: SubjectAnatomy, points_lps: np.ndarray, only_wm: bool = False
) -> np.ndarray:
    """GM, WM, CSF probabilities at patient points ``(..., 3)``; returns ``(3, ...)``, or
    ``(1, ...)`` with WM alone."""
    gm, wm, csf, voxel_from_ras = _mni_maps()
    mni = mni_points(anatomy, points_lps)
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
    realistic: bool = False,
) -> tuple[PhantomLesion, ...]:
    """Put ``count`` lesions in deep white matter, never touching each other: centred within
    1 mm of a slice centre of ``geometry`` so each one is visible on at least one slice, or
    (``realistic``) anywhere through the slab, most of them tiny, lobulated, of drawn T2
    FLAIR contrast (see :func:`make_realistic_phantom`)."""
    world = geometry.world()
    wm = tissue_maps(anatomy, world, only_wm=True)[0]
    candidates = np.argwhere(wm > 0.93)
    lesions: list[PhantomLesion] = []
    attempts = 0
    while len(lesions) < count and attempts < 400 and len(candidates):
        attempts += 1
        k, r, c = candidates[rng.integers(len(candidates))]
        if realistic:
            span = (2.0, 6.0) if rng.random() < 0.75 else (6.0, 15.0)
            diameter = float(np.exp(rng.uniform(*np.log(span))))
            offset = rng.uniform(-0.5, 0.5) * geometry.slice_spacing
        else:
            # Log-uniform diameters: small lesions are the common ones.
            diameter = float(np.exp(rng.uniform(*np.log(diameter_range_mm))))
            offset = rng.uniform(-1.0, 1.0)
        radii = tuple(
            float(v) for v in diameter / 2 * rng.uniform(0.75, 1.25, 3)
        )
        centre = world[k, r, c] + offset * geometry.normal
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
        lesion_class = str(rng.choice(["FCI", "LACI"]))
        lesion = PhantomLesion(
            number=len(lesions) + 1,
            lesion_class=lesion_class,
            centre=tuple(float(v) for v in centre),
            radii=radii,
            rotation=tuple(
                tuple(float(v) for v in row)
                for row in _rotation(rng.uniform(0, np.pi, 3))
            ),
        )
        if realistic:
            lesion = replace(
                lesion, blobs=_blobs(rng, diameter),
                t2_contrast=float(np.exp(rng.uniform(np.log(1.15), np.log(2.5)))),
                cavitated=lesion_class == "LACI" and diameter >= 3.0 and rng.random() < 0.4)
        lesions.append(lesion)
    return tuple(lesions)


def _blobs(rng: np.random.Generator, diameter: float) -> tuple[tuple[float, float, float, float], ...]:
    """0-3 more blobs in a row along one direction, each 0.35-0.8 of a diameter further."""
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    blobs, reach = [], 0.0
    for _ in range(int(rng.integers(0, 4))):
        reach += float(rng.uniform(0.35, 0.8)) * diameter
        dx, dy, dz = direction * reach
        blobs.append((float(dx), float(dy), float(dz), float(rng.uniform(0.5, 0.9))))
    return tuple(blobs)


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


def scanner_geometries(
    rng: np.random.Generator, slice_mm: tuple[float, float] = (3.0, 6.0)
) -> tuple[StackGeometry, StackGeometry]:
    """A T2 FLAIR and a T1 FLAIR stack as different scanners and protocols write them:
    in-plane 0.45-1.0 mm (matrix 224-512 over a 220-250 mm field of view), ``slice_mm`` slices
    (with a gap of up to 1 mm), tilted up to 12 degrees about the left-right axis; the T1 FLAIR
    with its own matrix and slice spacing, covering the same brain."""

    def one(tilt: float) -> StackGeometry:
        fov = float(rng.uniform(220, 250))
        matrix = int(np.clip(round(fov / rng.uniform(0.45, 1.0) / 16) * 16, 224, 512))
        spacing = float(rng.uniform(*slice_mm))
        thickness = spacing - float(rng.uniform(0.0, min(1.0, spacing - 3.0)))
        return axial_geometry(matrix=matrix, fov_mm=fov, slices=int(round(125 / spacing)),
                              slice_spacing=spacing, slice_thickness=thickness, tilt_deg=tilt)

    tilt = float(rng.uniform(-12, 12))
    return one(tilt), one(tilt + float(rng.uniform(-2, 2)))


def _lesion_fraction(
    lesion: PhantomLesion, geometry: StackGeometry, shrink: float = 1.0, samples: int = 5,
    in_plane: int = 1, profile: SliceProfile | None = None,
) -> np.ndarray:
    """Partial-volume fraction of each voxel inside the (shrunk, possibly bumpy or lobulated)
    lesion, sampled ``samples`` times through the slice thickness (the nominal box) or, with a
    ``profile``, weighted by that slice profile over and beyond the slab, and ``in_plane`` x
    ``in_plane`` times across the pixel (1: the pixel centre only)."""
    fraction = np.zeros((geometry.slices, geometry.rows, geometry.columns), dtype=np.float32)
    rotation = np.asarray(lesion.rotation)
    radii = np.asarray(lesion.radii) * shrink
    centre = np.asarray(lesion.centre)
    # Bumps reach past the ellipsoid by up to the sum of their weights; blobs by their offset.
    reach = float(radii.max()) * (1.0 + sum(w for *_, w in lesion.bumps))
    for dx, dy, dz, scale in lesion.blobs:
        reach = max(reach, float(np.linalg.norm([dx, dy, dz])) + float(radii.max()) * scale)
    if profile is None:
        # Counts divided once at the end: the truth compares k / n with 0.5 exactly.
        through, weights = _midpoints(samples), np.ones(samples)
    else:
        through, weights = profile.samples()
    through_mm = float(np.abs(through).max()) * geometry.slice_thickness
    box = _bounding_box(geometry, centre, reach, through_mm)
    if box is None:
        return fraction
    row, column = np.asarray(geometry.row_cosine), np.asarray(geometry.column_cosine)
    across = _midpoints(in_plane)
    for offset, weight in zip(through * geometry.slice_thickness, weights, strict=True):
        points = geometry.world(float(offset), box)
        for dr in across * geometry.pixel_spacing[0]:
            for dc in across * geometry.pixel_spacing[1]:
                relative = points + dr * column + dc * row - centre
                fraction[box] += (_inside(lesion, relative, rotation, radii).astype(np.float32)
                                  * np.float32(weight))
    return fraction / np.float32(weights.sum() * in_plane * in_plane)


def _inside(lesion: PhantomLesion, relative: np.ndarray, rotation: np.ndarray,
            radii: np.ndarray) -> np.ndarray:
    """Whether points ``relative`` to the lesion centre (mm, ``(..., 3)``) lie inside it."""
    local = relative @ rotation / radii
    limit: np.ndarray | float = 1.0
    if lesion.bumps:
        unit = relative / np.maximum(np.linalg.norm(relative, axis=-1, keepdims=True), 1e-6)
        limit = np.maximum(1.0 + sum(w * (unit @ np.array([dx, dy, dz])) ** 3
                                     for dx, dy, dz, w in lesion.bumps), 0.3) ** 2
    inside = np.sum(local * local, axis=-1) <= limit
    for dx, dy, dz, scale in lesion.blobs:
        blob = (relative - np.array([dx, dy, dz])) @ rotation / (radii * scale)
        inside |= np.sum(blob * blob, axis=-1) <= 1.0
    return np.asarray(inside)


def _bounding_box(
    geometry: StackGeometry, centre: np.ndarray, radius: float, through_mm: float | None = None,
) -> tuple[slice, slice, slice] | None:
    """Index ranges of the voxels within ``radius`` (+ one voxel, + ``through_mm``, default
    half the slice thickness) of ``centre``; None if off the stack."""
    relative = centre - np.asarray(geometry.origin)
    index = np.array(
        [
            relative @ geometry.normal / geometry.slice_spacing,
            relative @ np.asarray(geometry.column_cosine) / geometry.pixel_spacing[0],
            relative @ np.asarray(geometry.row_cosine) / geometry.pixel_spacing[1],
        ]
    )
    reach = (
        radius + (geometry.slice_thickness / 2 if through_mm is None else through_mm)
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
    :func:`training.truth.lesion_voxels` says; look-alikes are never labelled."""
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
    wm_level = signal["wm"] * anatomy.signal_scale["wm"]
    csf_level = signal["csf"] * anatomy.signal_scale["csf"]
    if contrast is Contrast.T2_FLAIR and phantom.cap_strength > 0:
        image = image + phantom.cap_strength * wm_level * _periventricular(
            anatomy, world, wm, csf, geometry)
    labels = np.zeros(image.shape, dtype=np.uint8)
    samples = phantom.in_plane_samples
    profile = phantom.slice_profile

    def seen(shape: PhantomLesion, shrink: float = 1.0) -> np.ndarray:
        """What the image shows of ``shape``: its partial volume through the slice profile."""
        return _lesion_fraction(shape, geometry, shrink=shrink, in_plane=samples,
                                profile=profile)

    for lesion in phantom.lesions:
        nominal = _lesion_fraction(lesion, geometry, in_plane=samples)
        labels[lesion_voxels(nominal)] = LESION_LABELS[lesion.lesion_class]
        fraction = nominal if profile is None else seen(lesion)
        if contrast is Contrast.T2_FLAIR:
            if lesion.t2_contrast is None:
                brightness = signal["lesion"] * float(rng.uniform(0.9, 1.15))
            else:
                brightness = lesion.t2_contrast * wm_level
            image = image * (1 - fraction) + fraction * brightness
            if lesion.cavitated:  # a chronic lacune: CSF-dark core inside the bright rim
                core = seen(lesion, shrink=0.55)
                image = image * (1 - core) + core * csf_level * float(rng.uniform(1.0, 2.0))
        elif lesion.lesion_class == "FCI":
            # Iso on T1 FLAIR: the lesion takes the white-matter signal (the realistic
            # generator: iso to mildly hypointense).
            low = 0.95 if lesion.t2_contrast is None else 0.85
            image = image * (1 - fraction) + fraction * wm_level * float(rng.uniform(low, 1.02))
        else:
            core = seen(lesion, shrink=0.8)
            image = image * (1 - fraction) + fraction * wm_level * 0.9
            dark = signal["lesion"] if lesion.t2_contrast is None else \
                csf_level * float(rng.uniform(1.0, 2.5))
            image = image * (1 - core) + core * dark
    for mimic in phantom.mimics:
        fraction = seen(mimic.shape)
        level = mimic.signal if contrast is Contrast.T2_FLAIR else mimic.t1_signal
        image = image * (1 - fraction) + fraction * level * wm_level
    # Smooth multiplicative bias field, then Rician noise.
    centred = (world - world.reshape(-1, 3).mean(axis=0)) / 100.0
    c = anatomy.bias_coefficients
    bias = np.exp(c[0] + centred[..., 0] * c[1] + centred[..., 1] * c[2] + centred[..., 2] * c[3])
    image = image * bias
    sigma = anatomy.noise_sigma
    real, imaginary = rng.normal(0, sigma, image.shape), rng.normal(0, sigma, image.shape)
    if phantom.in_plane_resolution is not None:
        image, real, imaginary = _reconstruct(image, real, imaginary, sigma,
                                              phantom.in_plane_resolution, geometry)
    noisy = np.sqrt((image + real) ** 2 + imaginary**2)
    if contrast is Contrast.T2_FLAIR and phantom.speckles > 0:
        # Isolated bright pixels (spikes, flow): single voxels a detector must not call lesions.
        count = rng.poisson(phantom.speckles * geometry.slices)
        brain = np.argwhere(wm + gm > 0.8)
        if count and len(brain):
            at = brain[rng.integers(len(brain), size=count)]
            noisy[tuple(at.T)] *= rng.uniform(1.6, 2.6, count)
    stored = STORED_SCALE * phantom.stored_scale
    pixels = np.clip(np.round(noisy * stored), 0, 4095).astype(np.uint16)
    return SeriesImage(geometry=geometry, pixels=pixels, labels=labels)


def _reconstruct(image: np.ndarray, real: np.ndarray, imaginary: np.ndarray, sigma: float,
                 resolution: InPlaneResolution, geometry: StackGeometry,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``image`` and both noise channels through the in-plane point spread, slice by slice;
    the noise is scaled back to ``sigma`` per pixel, so a subject's SNR means what it meant
    before (only its texture is now correlated)."""
    from scipy.ndimage import gaussian_filter

    spread = resolution.spread(geometry)
    # Noise wraps around (it is stationary): a reflected edge would raise its variance there.
    real, imaginary = (gaussian_filter(noise, spread, mode="wrap") for noise in (real, imaginary))
    gain = sigma / max(float(np.hypot(real.std(), imaginary.std()) / np.sqrt(2)), 1e-12)
    return gaussian_filter(image, spread), real * gain, imaginary * gain


def _periventricular(anatomy: SubjectAnatomy, world: np.ndarray, wm: np.ndarray,
                     csf: np.ndarray, geometry: StackGeometry) -> np.ndarray:
    """0-1: white matter next to the lateral ventricles (caps at the horns, a thin rim along
    the bodies), where FLAIR is normally a little bright; smooth, about 3 mm deep."""
    from scipy.ndimage import gaussian_filter

    mni = mni_points(anatomy, world)
    deep = ((np.abs(mni[..., 0]) < 28) & (mni[..., 1] > -45) & (mni[..., 1] < 30)
            & (mni[..., 2] > -5) & (mni[..., 2] < 35))
    ventricles = (csf > 0.6) & deep
    sigma_px = (0.0, 2.5 / geometry.pixel_spacing[0], 2.5 / geometry.pixel_spacing[1])
    near = gaussian_filter(ventricles.astype(np.float32), sigma_px)
    return np.clip(near * 3.0, 0.0, 1.0) * wm


# The realistic generator (issue 22): anatomy, noise and contrast as wide as real scanners.
REALISTIC_ANATOMY = AnatomyRanges(rotation_deg=10.0, scale=(0.88, 1.12), shift_mm=8.0,
                                  signal=(0.82, 1.18), noise=(0.008, 0.06), bias=0.3)


def peak_cnr(phantom: Phantom, lesion: PhantomLesion, geometry: StackGeometry) -> float:
    """``lesion``'s peak contrast-to-noise on T2 FLAIR as the realistic generator images it on
    ``geometry``: its largest profile-weighted, point-spread-blurred partial volume times its
    contrast over the white matter, in units of the noise sigma (bias field ignored; a
    cavitated lesion by its bright rim, as if solid)."""
    from scipy.ndimage import gaussian_filter

    if lesion.t2_contrast is None:
        raise ValueError("peak_cnr is for lesions of drawn contrast (the realistic generator)")
    fraction = _lesion_fraction(lesion, geometry, in_plane=phantom.in_plane_samples,
                                profile=phantom.slice_profile)
    inside = np.argwhere(fraction > 0)
    if not len(inside):
        return 0.0
    if phantom.in_plane_resolution is not None:  # blurred around the lesion only (zeros beyond)
        spread = phantom.in_plane_resolution.spread(geometry)
        margin = [0] + [int(np.ceil(4 * sigma)) + 1 for sigma in spread[1:]]
        box = tuple(slice(max(int(low) - pad, 0), int(high) + pad + 1) for low, high, pad in
                    zip(inside.min(axis=0), inside.max(axis=0), margin, strict=True))
        fraction = gaussian_filter(np.pad(fraction[box], [(0, 0), *[(m, m) for m in margin[1:]]]),
                                   spread)
    white_matter = TISSUE_SIGNAL[Contrast.T2_FLAIR]["wm"] * phantom.anatomy.signal_scale["wm"]
    return (float(fraction.max()) * (lesion.t2_contrast - 1.0) * white_matter
            / phantom.anatomy.noise_sigma)


def make_realistic_phantom(seed: int, geometry: StackGeometry,
                           min_cnr: float = 0.0) -> Phantom:
    """A subject of the realistic generator, drawn per subject:

    - 0-20 lesions (15 % of subjects none), most tiny: 75 % of diameters log-uniform in
      2-6 mm, the rest 6-15 mm; 1-4 overlapping blobs in a row (elongated, lobulated), centred
      anywhere through a slice, so partial volume decides how they look;
    - T2 FLAIR contrast 1.15-2.5 x the white matter (log-uniform), never saturated; 40 % of
      LACI cavitated (CSF-dark core, bright rim); T1 FLAIR: FCI iso to mildly hypo, LACI dark;
    - look-alikes, unlabelled: 0-12 perivascular spaces, 0-3 FLAIR flow artefacts in CSF, 0-6
      vessels, periventricular caps (0-0.6 x WM added), 0-3 bright speckles per slice;
    - noise sigma 0.8-6 % of full scale (white matter SNR about 8-60), bias fields up to 30 %
      per 100 mm, tissue signals +-18 %, each scanner's own stored range;
    - a slice profile (:class:`SliceProfile`): FWHM 0.9-1.2 x the thickness, edges from
      nearly a box to about a Gaussian, so a lesion shows faintly on the slice beside it and
      less than fully on its own (the truth stays the nominal box);
    - an in-plane point spread (:class:`InPlaneResolution`): acquired voxels of 0.7-1.2 mm
      (zero-filled to finer matrices), k-space apodisation widening it 1.0-1.4 x, so at
      0.45 mm pixels an edge spreads over about 1.5-4 pixels, and the noise is correlated.

    ``min_cnr`` > 0 (training only, never a test or validation set): lesions whose
    :func:`peak_cnr` on ``geometry`` is below it are left out, neither imaged nor labelled, so
    that no training label marks what the image cannot show; every other draw is unchanged."""
    rng = np.random.default_rng([seed, 22])
    anatomy = sample_anatomy(rng, REALISTIC_ANATOMY)
    count = 0 if rng.random() < 0.15 else int(rng.integers(1, 21))
    lesions = place_lesions(rng, anatomy, geometry, count, realistic=True)
    world = geometry.world()
    gm, wm, csf = tissue_maps(anatomy, world)
    mimics = (
        _mimics(rng, "pvs", int(rng.integers(0, 13)), world, (wm + gm > 0.8) & (wm > 0.3),
                radii=((0.5, 1.1), (0.5, 1.1), (2.0, 5.0)), signal=(0.15, 0.35), t1=(0.2, 0.4))
        + _mimics(rng, "flow", int(rng.integers(0, 4)), world, csf > 0.85,
                  radii=((1.0, 3.0), (1.0, 3.0), (1.0, 3.0)), signal=(1.4, 2.4), t1=(0.3, 0.6))
        + _mimics(rng, "vessel", int(rng.integers(0, 7)), world, wm + gm > 0.6,
                  radii=((0.3, 0.7), (0.3, 0.7), (5.0, 12.0)), signal=(0.1, 0.4), t1=(0.1, 0.4))
    )
    # Its own stream, so every other draw of a seed stays what it was before profiles.
    profile_rng = np.random.default_rng([seed, 22, 1])
    profile = SliceProfile(half_width=float(profile_rng.uniform(0.45, 0.6)),
                           edge=float(profile_rng.uniform(0.01, 0.22)))
    resolution_rng = np.random.default_rng([seed, 22, 2])
    resolution = InPlaneResolution(acquired_mm=float(resolution_rng.uniform(0.7, 1.2)),
                                   apodisation=float(resolution_rng.uniform(1.0, 1.4)))
    phantom = Phantom(anatomy=anatomy, lesions=lesions, seed=seed, mimics=mimics,
                      cap_strength=float(rng.uniform(0.0, 0.6)),
                      speckles=float(rng.uniform(0.0, 3.0)),
                      stored_scale=float(rng.uniform(0.5, 1.4)), in_plane_samples=2,
                      slice_profile=profile, in_plane_resolution=resolution)
    if min_cnr <= 0:
        return phantom
    return replace(phantom, lesions=tuple(
        lesion for lesion in lesions if peak_cnr(phantom, lesion, geometry) >= min_cnr))


def _mimics(rng: np.random.Generator, kind: str, count: int, world: np.ndarray,
            where: np.ndarray, radii: tuple[tuple[float, float], ...],
            signal: tuple[float, float], t1: tuple[float, float]) -> tuple[Mimic, ...]:
    candidates = np.argwhere(where)
    if not len(candidates):
        return ()
    chosen = candidates[rng.integers(len(candidates), size=count)]
    return tuple(
        Mimic(kind, PhantomLesion(
            number=0, lesion_class=kind, centre=tuple(float(v) for v in world[tuple(at)]),
            radii=tuple(float(rng.uniform(*r)) for r in radii),
            rotation=tuple(tuple(float(v) for v in row)
                           for row in _rotation(rng.uniform(0, np.pi, 3)))),
            signal=float(rng.uniform(*signal)), t1_signal=float(rng.uniform(*t1)))
        for at in chosen)
