"""The independent test generator (issue 22): studies no model is trained, calibrated or chosen on.

Written apart from :mod:`training.phantom` so that a model's figures on it do not reward that
generator's habits. It shares only the MNI152 tissue maps nilearn ships (real anatomy, loaded
here on its own) and the ground-truth rule (:mod:`training.truth`); everything else is its own:

- anatomy: an affine pose plus a smooth non-linear warp (Gaussian radial displacements);
- lesions: a sphere distorted by random low-order harmonics, stretched along one direction,
  2-8 mm (one in five 8-15 mm), soft-edged, contrast 1.15-2.5 x the white matter; LACI half
  uniformly bright, half with a CSF-dark core (T1 FLAIR: FCI iso, LACI dark);
- image formation: a Gaussian slice profile, 3 x 3 in-plane sub-samples, in-plane blur of the
  reconstruction, a quadratic bias field, Rician noise from complex Gaussians with a smoothly
  varying sigma (a g-factor map), white-matter SNR 10-45;
- look-alikes, never labelled: periventricular caps at the horns, perivascular spaces in the
  basal ganglia, tortuous vessels, a FLAIR ghost of the ventricles along the phase direction,
  single-pixel spikes;
- scanners: GE, Siemens, Philips and Canon headers (descriptions, timing, rescale slope and
  intercept, windows), 256 x 256 at 0.9 mm with 5 mm slices or 512 x 512 at 0.45 mm with 6 mm
  slices, tilted, T1 FLAIR on its own matrix and slices, moved by up to 2 mm.

Studies are written as DICOM and read back through the node's own pairing
(:func:`node.services.volumes.load_study_volumes`), as a scanner's would be.
Arrays are ``(slices, rows, cols)``; patient coordinates DICOM LPS mm.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from scipy.ndimage import gaussian_filter, map_coordinates

from training.truth import EARLIER_TRUTH_FRACTION, TRUTH_FRACTION, lesion_voxels

# Seeds of the independent held-out set; nothing is trained or calibrated on them.
INDEPENDENT_FIRST_SEED = 700_000

@dataclass(frozen=True)
class VendorStyle:
    """How one vendor writes FLAIR series: header names, (description, TR, TE range, TI) of
    each contrast in ms, the rescale slope range, the modality value range white matter sits
    at a third of, and the T2 FLAIR grey-matter and CSF signal as multiples of white matter."""

    manufacturer: str
    model: str
    t2: tuple[str, float, tuple[float, float], float]
    t1: tuple[str, float, tuple[float, float], float]
    slope: tuple[float, float]
    full_scale: tuple[float, float]
    gm: tuple[float, float]
    csf: tuple[float, float]


VENDORS: dict[str, VendorStyle] = {
    "GE": VendorStyle("GE MEDICAL SYSTEMS", "DISCOVERY MR750w",
                      ("Ax T2 FLAIR", 9500.0, (120.0, 140.0), 2375.0),
                      ("Ax T1 FLAIR", 2250.0, (12.0, 24.0), 780.0),
                      (1.0, 1.0), (1400.0, 3000.0), (1.12, 1.3), (0.1, 0.2)),
    "SIEMENS": VendorStyle("SIEMENS", "Prisma",
                           ("t2_tirm_tra_dark-fluid", 9000.0, (81.0, 95.0), 2500.0),
                           ("t1_tirm_tra", 2000.0, (8.0, 12.0), 900.0),
                           (1.0, 1.0), (600.0, 1400.0), (1.08, 1.22), (0.12, 0.28)),
    "PHILIPS": VendorStyle("Philips Medical Systems", "Ingenia",
                           ("T2W_FLAIR SENSE", 11000.0, (120.0, 140.0), 2800.0),
                           ("T1W_FLAIR", 2000.0, (15.0, 20.0), 800.0),
                           (1.5, 4.0), (900.0, 2200.0), (1.1, 1.35), (0.08, 0.2)),
    "CANON": VendorStyle("CANON_MEC", "Vantage Orian",
                         ("FLAIR_AX", 10000.0, (100.0, 110.0), 2700.0),
                         ("T1_FLAIR_AX", 2400.0, (10.0, 15.0), 850.0),
                         (1.0, 1.0), (1800.0, 3800.0), (1.1, 1.25), (0.1, 0.25)),
}
MATRICES = {256: (0.9, 5.0, 4.5), 512: (0.45, 6.0, 5.0)}  # matrix: (mm, slice spacing, thickness)


@dataclass(frozen=True)
class Stack:
    """A stack of parallel slices: ``origin`` is the centre of pixel (0, 0) of slice 0."""

    rows: int
    columns: int
    spacing: float  # in-plane, square pixels, mm
    slice_spacing: float
    thickness: float
    slices: int
    row_dir: np.ndarray  # along a row (column index grows)
    col_dir: np.ndarray  # down a column (row index grows)
    origin: np.ndarray

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    def points(self, through_mm: float = 0.0, in_row: float = 0.0, in_col: float = 0.0,
               box: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """Patient points ``(slices, rows, cols, 3)`` of pixel centres (or of ``box``), moved
        by ``through_mm`` along the normal and by fractions of a pixel in-plane."""
        box = box or (slice(0, self.slices), slice(0, self.rows), slice(0, self.columns))
        k = np.arange(box[0].start, box[0].stop, dtype=np.float64)[:, None, None, None]
        r = np.arange(box[1].start, box[1].stop, dtype=np.float64)[None, :, None, None]
        c = np.arange(box[2].start, box[2].stop, dtype=np.float64)[None, None, :, None]
        return (self.origin + (k * self.slice_spacing + through_mm) * self.normal
                + (c + in_row) * self.spacing * self.row_dir
                + (r + in_col) * self.spacing * self.col_dir)

    def box_around(self, centre: np.ndarray, radius: float) -> tuple[slice, slice, slice] | None:
        relative = centre - self.origin
        index = np.array([relative @ self.normal / self.slice_spacing,
                          relative @ self.col_dir / self.spacing,
                          relative @ self.row_dir / self.spacing])
        reach = (radius + self.thickness) / np.array(
            [self.slice_spacing, self.spacing, self.spacing]) + 1
        bounds = [(max(int(np.floor(i - d)), 0), min(int(np.ceil(i + d)) + 1, n))
                  for i, d, n in zip(index, reach, (self.slices, self.rows, self.columns),
                                     strict=True)]
        if any(low >= high for low, high in bounds):
            return None
        return (slice(*bounds[0]), slice(*bounds[1]), slice(*bounds[2]))


def _stack(rng: np.random.Generator, matrix: int, spacing: float, slice_spacing: float,
           thickness: float, tilt_deg: float, centre: np.ndarray) -> Stack:
    tilt = np.radians(tilt_deg)
    row_dir = np.array([1.0, 0.0, 0.0])
    col_dir = np.array([0.0, np.cos(tilt), np.sin(tilt)])
    normal = np.cross(row_dir, col_dir)
    slices = int(round(120.0 / slice_spacing))
    fov = matrix * spacing
    origin = (centre - (fov / 2 - spacing / 2) * (row_dir + col_dir)
              - (slices - 1) * slice_spacing / 2 * normal)
    return Stack(matrix, matrix, spacing, slice_spacing, thickness, slices, row_dir, col_dir,
                 origin)


@dataclass(frozen=True)
class IndependentLesion:
    """A true lesion: class, where, how big (nominal diameter, mm) and how bright."""

    number: int
    lesion_class: str
    centre: np.ndarray
    radius: float
    stretch_axis: np.ndarray
    stretch: float
    harmonics: np.ndarray  # (n, 4): direction (3) and amplitude of cos(k u.d) terms
    contrast: float  # T2 FLAIR, x the white matter
    cored: bool  # LACI with a CSF-dark core


@dataclass(frozen=True)
class IndependentSubject:
    """One rendered study as the node reads it, with its truth on the T2 FLAIR grid.

    ``truth`` holds 0, 1 (FCI), 2 (LACI) under :data:`training.truth.TRUTH_FRACTION`;
    ``truth_earlier`` the same under the 0.5.x packages' rule; ``lesion_ids`` the lesion number
    of each true voxel; ``lesions`` the lesions' parameters (their contrast is per number)."""

    seed: int
    vendor: str
    matrix: int
    t2: np.ndarray
    t1: np.ndarray | None
    t1_available: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    slice_spacing_mm: float
    truth: np.ndarray
    truth_earlier: np.ndarray
    lesion_ids: np.ndarray
    lesions: tuple[IndependentLesion, ...] = field(default_factory=tuple)

    @property
    def voxel_volume_mm3(self) -> float:
        return self.pixel_spacing_mm[0] * self.pixel_spacing_mm[1] * self.slice_spacing_mm


@lru_cache(maxsize=1)
def _tissues() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GM, WM, CSF (float32) and the voxel-from-RAS matrix of the MNI152 2009 maps."""
    from nilearn.datasets import (
        load_mni152_brain_mask,
        load_mni152_gm_template,
        load_mni152_wm_template,
    )

    grey = load_mni152_gm_template(resolution=1)
    gm = np.asarray(grey.get_fdata(), np.float32)
    wm = np.asarray(load_mni152_wm_template(resolution=1).get_fdata(), np.float32)
    brain = np.asarray(load_mni152_brain_mask(resolution=1).get_fdata(), np.float32)
    return gm, wm, np.clip(brain - gm - wm, 0, 1), np.linalg.inv(grey.affine)


@dataclass(frozen=True)
class Warp:
    """Patient LPS -> MNI RAS: an affine pose, then Gaussian radial displacements."""

    linear: np.ndarray
    offset: np.ndarray
    centres: np.ndarray  # (n, 3) MNI mm
    widths: np.ndarray  # (n,) mm
    displacements: np.ndarray  # (n, 3) mm

    def __call__(self, points: np.ndarray) -> np.ndarray:
        mni = (points * np.array([-1.0, -1.0, 1.0])) @ self.linear.T + self.offset
        moved = mni.copy()
        for centre, width, displacement in zip(self.centres, self.widths, self.displacements,
                                               strict=True):
            weight = np.exp(-np.sum((mni - centre) ** 2, axis=-1) / (2 * width**2))
            moved += weight[..., None] * displacement
        return moved


def _warp(rng: np.random.Generator) -> Warp:
    angles = np.radians(rng.uniform(-8, 8, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rotation = (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
                @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
                @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))
    count = int(rng.integers(3, 7))
    return Warp(linear=rotation @ np.diag(rng.uniform(0.9, 1.1, 3)),
                offset=rng.uniform(-6, 6, 3), centres=rng.uniform(-50, 50, (count, 3)),
                widths=rng.uniform(18, 40, count),
                displacements=rng.normal(0, 2.5, (count, 3)))


def _sample(volume: np.ndarray, mni: np.ndarray) -> np.ndarray:
    voxel_from_ras = _tissues()[3]
    voxel = mni @ voxel_from_ras[:3, :3].T + voxel_from_ras[:3, 3]
    flat = np.moveaxis(voxel, -1, 0).reshape(3, -1)
    return map_coordinates(volume, flat, order=1, mode="constant").reshape(mni.shape[:-1])


def _lesion_shape(lesion: IndependentLesion, relative: np.ndarray) -> np.ndarray:
    """Signed closeness to the outline: <= 1 inside. ``relative`` points (mm) from the centre."""
    along = relative @ lesion.stretch_axis
    squeezed = relative + (1 / lesion.stretch - 1) * along[..., None] * lesion.stretch_axis
    distance = np.linalg.norm(squeezed, axis=-1)
    unit = squeezed / np.maximum(distance, 1e-6)[..., None]
    wobble = sum(a * np.cos(3.0 * (unit @ d)) for *d, a in lesion.harmonics)
    return distance / (lesion.radius * (1 + wobble))


def _coverage(lesion: IndependentLesion, stack: Stack, shrink: float = 1.0,
              ) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice, slice] | None]:
    """(nominal-voxel fraction, slice-profile-weighted fraction, box): the first counts 3 x 3
    in-plane (2 x 2 on pixels under 0.7 mm) x 5 through-slice samples inside the nominal voxel
    (the truth's "half of it");
    the second weights 7 samples over +-1 thickness by a Gaussian slice profile (the image)."""
    reach = lesion.radius * lesion.stretch * 1.6
    box = stack.box_around(lesion.centre, reach)
    shape = (stack.slices, stack.rows, stack.columns)
    nominal, profile = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    if box is None:
        return nominal, profile, None
    across = 3 if stack.spacing > 0.7 else 2
    offsets = (np.arange(across) + 0.5) / across - 0.5
    box_through = ((np.arange(5) + 0.5) / 5 - 0.5) * stack.thickness
    profile_through = np.linspace(-1, 1, 7) * stack.thickness
    sigma = stack.thickness / 2.355
    profile_weights = np.exp(-profile_through**2 / (2 * sigma**2))
    profile_weights /= profile_weights.sum()
    for through, weight, target in (
        *((t, 1 / 5, nominal) for t in box_through),
        *zip(profile_through, profile_weights, [profile] * 7, strict=True),
    ):
        for dr in offsets:
            for dc in offsets:
                points = stack.points(float(through), float(dc), float(dr), box)
                inside = _lesion_shape(lesion, points - lesion.centre) <= shrink
                target[box] += inside.astype(np.float32) * float(weight) / across**2
    return nominal, profile, box


def _lesions(rng: np.random.Generator, warp: Warp, stack: Stack) -> tuple[IndependentLesion, ...]:
    """0 (one subject in six) or 1-15 lesions in deep white matter, apart from each other."""
    count = 0 if rng.random() < 1 / 6 else int(rng.integers(1, 16))
    points = stack.points()[::2, ::4, ::4]
    wm = _sample(_tissues()[1], warp(points))
    candidates = points[wm > 0.95]
    lesions: list[IndependentLesion] = []
    for _ in range(300):
        if len(lesions) >= count or not len(candidates):
            break
        centre = candidates[rng.integers(len(candidates))] + rng.uniform(-2, 2, 3)
        diameter = rng.uniform(2.0, 8.0) if rng.random() < 0.8 else rng.uniform(8.0, 15.0)
        radius = diameter / 2
        if any(np.linalg.norm(centre - other.centre) < (radius + other.radius) * 2.2 + 2
               for other in lesions):
            continue
        probe = centre + rng.normal(size=(16, 3)) * radius
        if _sample(_tissues()[1], warp(probe)).mean() < 0.7:
            continue
        axis = rng.normal(size=3)
        lesion_class = "LACI" if rng.random() < 0.5 else "FCI"
        harmonics = np.column_stack([rng.normal(size=(4, 3)), rng.uniform(-0.12, 0.12, 4)])
        harmonics[:, :3] /= np.linalg.norm(harmonics[:, :3], axis=1, keepdims=True)
        lesions.append(IndependentLesion(
            number=len(lesions) + 1, lesion_class=lesion_class, centre=centre, radius=radius,
            stretch_axis=axis / np.linalg.norm(axis), stretch=float(rng.uniform(1.0, 2.2)),
            harmonics=harmonics, contrast=float(rng.uniform(1.15, 2.5)),
            cored=lesion_class == "LACI" and diameter > 3.5 and rng.random() < 0.5))
    return tuple(lesions)


def _near(points: np.ndarray, centre: np.ndarray, reach: float
          ) -> tuple[slice, slice, slice]:
    """A box of ``points`` ``(slices, rows, cols, 3)`` holding every point within ``reach`` mm
    of ``centre`` (found on every 8th row and column, widened by 8)."""
    step = 8
    coarse = points[:, ::step, ::step]
    spacing = float(np.linalg.norm(points[0, 0, 1] - points[0, 0, 0])) if points.shape[2] > 1 else 1.0
    hits = np.argwhere(np.abs(coarse - centre).max(axis=-1) <= reach + step * spacing * 1.5)
    if not len(hits):
        return (slice(0, 0), slice(0, 0), slice(0, 0))
    low, high = hits.min(axis=0), hits.max(axis=0)
    return (slice(max(low[0] - 1, 0), high[0] + 2),
            slice(max(low[1] * step - step, 0), high[1] * step + step + 1),
            slice(max(low[2] * step - step, 0), high[2] * step + step + 1))


def _tube(points: np.ndarray, start: np.ndarray, direction: np.ndarray, bend: np.ndarray,
          length: float, radius: float) -> np.ndarray:
    """Whether points lie within ``radius`` of a gently curved segment."""
    inside = np.zeros(points.shape[:-1], bool)
    box = _near(points, start + direction * length / 2,
                length / 2 + radius + float(np.abs(bend).max()) + 1)
    relative = points[box] - start
    t = np.clip(relative @ direction, 0, length)
    axis_point = start + t[..., None] * direction + np.sin(np.pi * t / length)[..., None] * bend
    inside[box] = np.linalg.norm(points[box] - axis_point, axis=-1) <= radius
    return inside


def _render(stack: Stack, warp: Warp, lesions: tuple[IndependentLesion, ...], t2: bool,
            rng: np.random.Generator, tissue: dict[str, float],
            snr: float, look_alikes: dict[str, np.ndarray]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(signal in white-matter units, truth, earlier-rule truth, lesion ids) of one series."""
    gm_map, wm_map, csf_map, _ = _tissues()
    points = stack.points()
    mni = warp(points)
    gm, wm, csf = (_sample(m, mni) for m in (gm_map, wm_map, csf_map))
    if t2:
        image = gm * tissue["gm"] + wm * 1.0 + csf * tissue["csf"]
    else:  # T1 FLAIR: white matter brightest, grey matter darker, CSF dark
        image = gm * tissue["t1_gm"] + wm * 1.0 + csf * tissue["t1_csf"]
    shape = image.shape
    truth = np.zeros(shape, np.uint8)
    earlier = np.zeros(shape, np.uint8)
    ids = np.zeros(shape, np.uint16)
    # Look-alikes first (a lesion drawn over them wins).
    if t2:
        caps = np.zeros(shape, bool)
        for centre in look_alikes["caps"]:
            near = _near(mni, centre, 5.0)
            caps[near] |= np.linalg.norm(mni[near] - centre, axis=-1) < 5.0
        blurred = gaussian_filter(caps.astype(np.float32),
                                  (0, 1.5 / stack.spacing, 1.5 / stack.spacing))
        image = image + look_alikes["cap_gain"][0] * blurred * wm
    pvs = np.zeros(shape, bool)
    for centre, direction in zip(look_alikes["pvs"], look_alikes["pvs_dir"], strict=True):
        pvs |= _tube(mni, centre, direction, np.zeros(3), 4.0, 0.8)
    image = np.where(pvs, tissue["csf"] if t2 else tissue["t1_csf"], image)
    for start, direction, bend in zip(look_alikes["vessels"], look_alikes["vessel_dir"],
                                      look_alikes["vessel_bend"], strict=True):
        image = np.where(_tube(mni, start, direction, bend, 18.0, 0.6), 0.15, image)
    for lesion in lesions:
        nominal, profile, covered = _coverage(lesion, stack)
        if covered is None:
            continue
        label = 1 if lesion.lesion_class == "FCI" else 2
        marked = lesion_voxels(nominal)
        truth[marked] = label
        ids[marked] = lesion.number
        earlier[lesion_voxels(nominal, EARLIER_TRUTH_FRACTION)] = label
        # A soft edge: the signal of a partly covered voxel follows the profile-weighted cover.
        if t2:
            level = lesion.contrast
            core_level = tissue["csf"] * 1.5
        else:
            level = rng.uniform(0.9, 1.05) if lesion.lesion_class == "FCI" else rng.uniform(0.5, 0.7)
            core_level = tissue["t1_csf"] * 1.3
        image = image * (1 - profile) + profile * level
        if lesion.cored or (not t2 and lesion.lesion_class == "LACI"):
            _, core, _ = _coverage(lesion, stack, shrink=0.6)
            image = image * (1 - core) + core * core_level
    if t2:  # a FLAIR ghost: the ventricles' faint copy moved along the phase direction
        shift = int(look_alikes["ghost_shift"][0] / stack.spacing)
        ghost = np.roll(gaussian_filter((csf > 0.7).astype(np.float32), (0, 1, 1)), shift, axis=1)
        image = image + look_alikes["ghost_gain"][0] * ghost * (gm + wm > 0.5)
    # Reconstruction blur, bias, g-factor-weighted Rician noise.
    blur = float(rng.uniform(0.3, 0.7)) * (0.9 / stack.spacing) ** 0.5
    image = gaussian_filter(image, (0, blur, blur))
    centred = (points - points.reshape(-1, 3).mean(axis=0)) / 100.0
    a = rng.uniform(-0.15, 0.15, 6)
    bias = np.exp(a[0] * centred[..., 0] + a[1] * centred[..., 1] + a[2] * centred[..., 2]
                  + a[3] * centred[..., 0] ** 2 + a[4] * centred[..., 1] ** 2
                  + a[5] * centred[..., 0] * centred[..., 1])
    image = image * bias
    # A g-factor map: noise up to 1.5 x in smooth patches (parallel imaging).
    phase = rng.uniform(0, 2 * np.pi, 2)
    gfactor = 1.0 + 0.25 * (2 + np.cos(centred[..., 0] * 4 + phase[0])
                            + np.cos(centred[..., 1] * 5 + phase[1]))
    sigma = gfactor / snr
    real = image + rng.normal(size=shape) * sigma
    imaginary = rng.normal(size=shape) * sigma
    magnitude = np.sqrt(real**2 + imaginary**2)
    if t2:
        spikes = rng.poisson(2.0 * stack.slices)
        where = np.argwhere(gm + wm > 0.8)
        if spikes and len(where):
            at = where[rng.integers(len(where), size=spikes)]
            magnitude[tuple(at.T)] *= rng.uniform(1.8, 2.8, spikes)
    return magnitude.astype(np.float32), truth, earlier, ids


def _datasets(pixels: np.ndarray, stack: Stack, vendor: str, t2: bool, seed: int,
              study_uid: str, frame_uid: str, rng: np.random.Generator) -> list[Dataset]:
    """The vendor's MR Image Storage instances: stored values through its rescale, 12 bits."""
    style = VENDORS[vendor]
    description, tr, te_range, ti = style.t2 if t2 else style.t1
    slope = float(rng.uniform(*style.slope))
    full_scale = float(rng.uniform(*style.full_scale))
    # Modality values = stored * slope; white matter sits at a third of full scale.
    stored = np.clip(np.round(pixels * full_scale / 3 / slope), 0, 4095).astype(np.uint16)
    series_uid = generate_uid()
    when = datetime(2026, 6, 1, 9, 30)
    te = float(rng.uniform(*te_range))
    out = []
    for k in range(stack.slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientName = f"INDEPENDENT^{seed}"
        ds.PatientID = f"IND{seed}"
        ds.PatientBirthDate = ""
        ds.PatientSex = "F" if seed % 2 else "M"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
            study_uid, series_uid, frame_uid)
        ds.StudyDate = ds.SeriesDate = when.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = when.strftime("%H%M%S")
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", f"A{seed}", ""
        ds.Modality = "MR"
        ds.Manufacturer = style.manufacturer
        ds.ManufacturerModelName = style.model
        ds.MagneticFieldStrength = 3.0 if vendor != "CANON" else 1.5
        ds.SeriesDescription = description
        ds.SeriesNumber = 5 if t2 else 7
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NORM"]
        ds.ScanningSequence, ds.SequenceVariant = ["SE", "IR"], ["SK"]
        ds.ScanOptions, ds.MRAcquisitionType = "", "2D"
        ds.RepetitionTime, ds.EchoTime, ds.InversionTime = tr, round(te, 1), ti
        ds.SliceThickness = stack.thickness
        ds.SpacingBetweenSlices = stack.slice_spacing
        position = stack.origin + k * stack.slice_spacing * stack.normal
        ds.ImagePositionPatient = [round(float(v), 5) for v in position]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*stack.row_dir, *stack.col_dir)]
        ds.PixelSpacing = [stack.spacing, stack.spacing]
        ds.Rows, ds.Columns = stack.rows, stack.columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if slope != 1.0 or vendor == "PHILIPS":
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = round(slope, 6), 0, "US"
        ds.WindowCenter = int(full_scale / 3)
        ds.WindowWidth = int(full_scale / 1.5)
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        out.append(ds)
    return out


def independent_subject(seed: int, matrix: int | None = None) -> IndependentSubject:
    """Render ``seed``'s study (``matrix`` 256 or 512; None: even seeds 256, odd 512), write it
    as DICOM, read it back through the node's pairing."""
    from node.services.volumes import load_study_volumes

    rng = np.random.default_rng([seed, 2024])
    matrix = matrix or (256 if seed % 2 == 0 else 512)
    vendor = list(VENDORS)[int(rng.integers(len(VENDORS)))]
    style = VENDORS[vendor]
    spacing, slice_spacing, thickness = MATRICES[matrix]
    tilt = float(rng.uniform(-15, 15))
    centre = np.array([0.0, 18.0, 16.0]) + rng.uniform(-4, 4, 3)
    t2_stack = _stack(rng, matrix, spacing, slice_spacing, thickness, tilt, centre)
    t1_matrix = int(rng.choice([256, 320, 384, 512]))
    t1_stack = _stack(rng, t1_matrix, 230.0 / t1_matrix, float(rng.uniform(5.0, 6.5)),
                      float(rng.uniform(4.0, 5.0)), tilt + float(rng.uniform(-1.5, 1.5)),
                      centre + rng.uniform(-2, 2, 3))
    warp = _warp(rng)
    lesions = _lesions(rng, warp, t2_stack)
    tissue = {"gm": float(rng.uniform(*style.gm)), "csf": float(rng.uniform(*style.csf)),
              "t1_gm": float(rng.uniform(0.6, 0.8)), "t1_csf": float(rng.uniform(0.15, 0.3))}
    side = np.array([1.0, -1.0])
    look_alikes = {
        # Frontal and occipital horn tips of both lateral ventricles (MNI mm), moved a little.
        "caps": np.array([[s * 17, 22, 12] for s in side] + [[s * 25, -40, 10] for s in side])
        + rng.normal(0, 2, (4, 3)),
        "cap_gain": np.array([rng.uniform(0.1, 0.5)]),
        "pvs": np.column_stack([rng.uniform(-25, 25, 8), rng.uniform(-10, 10, 8),
                                rng.uniform(-5, 8, 8)]),
        "pvs_dir": np.tile([0.0, 0.0, 1.0], (8, 1)),
        "vessels": rng.uniform(-50, 50, (4, 3)) * np.array([1, 1, 0.5]),
        "vessel_dir": (v := rng.normal(size=(4, 3))) / np.linalg.norm(v, axis=1, keepdims=True),
        "vessel_bend": rng.normal(0, 2, (4, 3)),
        "ghost_shift": np.array([rng.uniform(20, 60)]),
        "ghost_gain": np.array([rng.uniform(0.0, 0.12)]),
    }
    snr = float(rng.uniform(10, 45))
    t2_image, truth, earlier, ids = _render(t2_stack, warp, lesions, True, rng, tissue, snr,
                                            look_alikes)
    t1_image, *_ = _render(t1_stack, warp, lesions, False, rng, tissue, snr, look_alikes)
    study_uid, frame_uid = generate_uid(), generate_uid()
    with tempfile.TemporaryDirectory(prefix="lacuna-independent-") as folder:
        paths: dict[bool, list[Path]] = {True: [], False: []}
        for is_t2, image, stack in ((True, t2_image, t2_stack), (False, t1_image, t1_stack)):
            for ds in _datasets(image, stack, vendor, is_t2, seed, study_uid, frame_uid, rng):
                path = Path(folder) / f"{ds.SOPInstanceUID}.dcm"
                ds.save_as(path, enforce_file_format=True)
                paths[is_t2].append(path)
        volumes = load_study_volumes(paths[True], paths[False])
    # The node orders T2 slices along the normal, as they were rendered (normal order).
    return IndependentSubject(
        seed=seed, vendor=vendor, matrix=matrix, t2=volumes.t2, t1=volumes.t1,
        t1_available=volumes.t1_available, pixel_spacing_mm=volumes.pixel_spacing,
        slice_spacing_mm=volumes.slice_spacing, truth=truth, truth_earlier=earlier,
        lesion_ids=ids, lesions=lesions)


__all__ = ["INDEPENDENT_FIRST_SEED", "TRUTH_FRACTION", "VENDORS", "IndependentSubject",
           "independent_subject"]
