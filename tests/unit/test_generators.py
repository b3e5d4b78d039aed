"""The realistic training generator and the independent test generator: the ranges they claim,
the truth rule, and look-alikes that are never labelled (issue 22). Each renders real anatomy
(the MNI152 maps nilearn ships), a few seconds a subject."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from skimage.measure import label

from training.independent import VENDORS, IndependentLesion, Stack, _coverage, independent_subject
from training.phantom import (
    FWHM_PER_SIGMA,
    REALISTIC_ANATOMY,
    Contrast,
    axial_geometry,
    make_realistic_phantom,
    peak_cnr,
    render_series,
    sample_anatomy,
)
from training.train import TrainingPlan, make_training_subjects
from training.truth import lesion_voxels


def test_realistic_phantoms_draw_tiny_lobulated_lesions_of_moderate_contrast() -> None:
    geometry = axial_geometry()
    phantoms = [make_realistic_phantom(seed, geometry) for seed in range(30)]
    lesions = [lesion for p in phantoms for lesion in p.lesions]
    counts = [len(p.lesions) for p in phantoms]
    assert min(counts) == 0 and max(counts) <= 20 and sum(c > 5 for c in counts) > 5
    diameters = np.array([2 * np.mean(lesion.radii) for lesion in lesions])
    assert np.mean(diameters < 6.5) > 0.6  # most are tiny
    assert diameters.min() >= 2.0 * 0.75 and diameters.max() <= 15.0 * 1.25
    contrasts = [lesion.t2_contrast for lesion in lesions]
    assert all(c is not None and 1.15 <= c <= 2.5 for c in contrasts)
    assert min(contrasts) < 1.3 and max(contrasts) > 2.2  # barely visible to bright  # type: ignore[operator]
    assert sum(bool(lesion.blobs) for lesion in lesions) > len(lesions) / 2  # never only spheres
    assert any(lesion.cavitated for lesion in lesions)
    assert not any(lesion.cavitated for lesion in lesions if lesion.lesion_class == "FCI")
    kinds = {mimic.kind for p in phantoms for mimic in p.mimics}
    assert kinds == {"pvs", "flow", "vessel"}


def test_realistic_noise_and_bias_ranges() -> None:
    rng = np.random.default_rng(0)
    anatomies = [sample_anatomy(rng, REALISTIC_ANATOMY) for _ in range(300)]
    sigmas = [a.noise_sigma for a in anatomies]
    # White matter sits at 0.46: SNR from about 8 to about 60.
    assert 0.46 / max(sigmas) < 8.5 and 0.46 / min(sigmas) > 50
    assert max(np.abs(a.bias_coefficients).max() for a in anatomies) > 0.25


def test_realistic_look_alikes_are_never_labelled_and_lesions_are_not_saturated() -> None:
    geometry = axial_geometry()
    phantom = make_realistic_phantom(3, geometry)
    assert phantom.lesions and phantom.mimics and phantom.cap_strength > 0
    image = render_series(phantom, geometry, Contrast.T2_FLAIR)
    without_lesions = render_series(replace(phantom, lesions=()), geometry, Contrast.T2_FLAIR)
    assert not without_lesions.labels.any()  # caps, vessels, PVS, flow, speckles: no truth
    assert label(image.labels > 0, connectivity=3).max() >= len(phantom.lesions) - 1
    inside = image.pixels[image.labels > 0]
    assert inside.max() < 4095  # 12 bits, not clipped


def test_independent_generator_imports_nothing_from_the_training_generator() -> None:
    source = Path(__file__).parents[2] / "training" / "independent.py"
    imported = {node.module for node in ast.walk(ast.parse(source.read_text()))
                if isinstance(node, ast.ImportFrom)}
    assert "training.phantom" not in imported and "training.dataset" not in imported
    assert "training.truth" in imported  # the one shared rule


def test_independent_truth_is_half_of_the_nominal_voxel() -> None:
    stack = Stack(rows=32, columns=32, spacing=1.0, slice_spacing=5.0, thickness=5.0, slices=5,
                  row_dir=np.array([1.0, 0, 0]), col_dir=np.array([0, 1.0, 0]),
                  origin=np.array([-15.5, -15.5, -10.0]))
    lesion = IndependentLesion(1, "FCI", np.array([0.0, 0.0, 1.0]), 2.0, np.array([1.0, 0, 0]),
                               1.0, np.zeros((0, 4)), 1.5, False)
    nominal, profile, box = _coverage(lesion, stack)
    assert box is not None and nominal.max() > 0.5
    truth = lesion_voxels(nominal)
    assert np.array_equal(truth, nominal >= 0.5)
    # The image follows a Gaussian slice profile, reaching past the nominal voxel.
    assert (profile > 0).sum() > (nominal > 0).sum()


def test_independent_subjects_span_vendors_and_matrices_and_label_only_lesions() -> None:
    subject = independent_subject(700_000)  # even seed: 256x256, 5 mm
    assert subject.matrix == 256 and subject.t2.shape[1:] == (256, 256)
    assert np.isclose(subject.pixel_spacing_mm[0], 0.9) and np.isclose(subject.slice_spacing_mm, 5.0)
    assert subject.t1_available.any()  # T1 FLAIR on its own grid, paired by the node
    ids = np.unique(subject.lesion_ids[subject.lesion_ids > 0])
    assert set(ids) <= {lesion.number for lesion in subject.lesions}
    assert (subject.truth > 0).sum() == (subject.lesion_ids > 0).sum()  # only lesions labelled
    assert (subject.truth_earlier > 0).sum() >= (subject.truth > 0).sum()
    for lesion in subject.lesions:
        assert 1.15 <= lesion.contrast <= 2.5 and 1.0 <= lesion.radius <= 7.5
    assert {style.manufacturer for style in VENDORS.values()} == {
        "GE MEDICAL SYSTEMS", "SIEMENS", "Philips Medical Systems", "CANON_MEC"}


def test_realistic_subjects_blur_in_plane_keep_their_noise_level_and_label_the_box() -> None:
    geometry = axial_geometry(matrix=448, fov_mm=224.0, slices=4, slice_spacing=6.0)  # 0.5 mm
    resolutions = [make_realistic_phantom(seed, geometry).in_plane_resolution
                   for seed in range(12)]
    assert all(r is not None and 0.7 <= r.acquired_mm <= 1.2 and 1.0 <= r.apodisation <= 1.4
               for r in resolutions)
    # Never sharper than the pixels written: at 2 mm pixels the FWHM is at least 2 mm.
    assert all(r is not None and r.sigma_px((2.0, 2.0))[0] * FWHM_PER_SIGMA >= 1.0 - 1e-9
               for r in resolutions)
    phantom = next(p for p in (make_realistic_phantom(seed, geometry) for seed in range(20))
                   if p.lesions and p.in_plane_resolution is not None
                   and p.in_plane_resolution.sigma_px(geometry.pixel_spacing)[0] > 1.0)
    blurred = render_series(phantom, geometry, Contrast.T2_FLAIR)
    sharp = render_series(replace(phantom, in_plane_resolution=None), geometry,
                          Contrast.T2_FLAIR)
    assert np.array_equal(blurred.labels, sharp.labels)  # the truth is the nominal box
    # Background (air) is Rayleigh of the same sigma, so the subject's SNR is what it was;
    # neighbouring pixels' noise is now correlated.
    air = (slice(None), slice(2, 30), slice(2, 30))
    assert abs(blurred.pixels[air].mean() / sharp.pixels[air].mean() - 1) < 0.05
    def neighbour_correlation(pixels: np.ndarray) -> float:
        patch = pixels[air].astype(float)
        return float(np.corrcoef(patch[:, :, :-1].ravel(), patch[:, :, 1:].ravel())[0, 1])
    assert neighbour_correlation(sharp.pixels) < 0.1 < 0.5 < neighbour_correlation(
        blurred.pixels)


def test_a_training_visibility_floor_leaves_out_only_the_lesions_under_it() -> None:
    geometry = axial_geometry(matrix=96, slices=8, slice_spacing=6.0)
    phantom = next(p for p in (make_realistic_phantom(seed, geometry) for seed in range(40))
                   if len(p.lesions) >= 6)
    cnrs = {lesion.number: peak_cnr(phantom, lesion, geometry) for lesion in phantom.lesions}
    floor = float(np.median(list(cnrs.values())))
    floored = make_realistic_phantom(phantom.seed, geometry, min_cnr=floor)
    assert [lesion.number for lesion in floored.lesions] == [
        number for number, cnr in cnrs.items() if cnr >= floor]
    assert 0 < len(floored.lesions) < len(phantom.lesions)
    for name in ("mimics", "cap_strength", "speckles", "stored_scale", "slice_profile",
                 "in_plane_resolution"):  # every other draw the same
        assert getattr(floored, name) == getattr(phantom, name), name
    assert floored.anatomy.noise_sigma == phantom.anatomy.noise_sigma
    # The peak CNR scales with the contrast over white matter and falls with the noise.
    lesion = phantom.lesions[0]
    assert lesion.t2_contrast is not None
    brighter = replace(lesion, t2_contrast=1.0 + 2 * (lesion.t2_contrast - 1.0))
    assert np.isclose(peak_cnr(phantom, brighter, geometry), 2 * cnrs[lesion.number], rtol=1e-5)
    noisier = replace(phantom, anatomy=replace(phantom.anatomy,
                                               noise_sigma=2 * phantom.anatomy.noise_sigma))
    assert np.isclose(peak_cnr(noisier, lesion, geometry), cnrs[lesion.number] / 2, rtol=1e-5)


def test_a_visibility_floor_is_refused_for_generators_without_drawn_contrast() -> None:
    for plan in (TrainingPlan(varied=True, min_training_cnr=2.0),
                 TrainingPlan(realistic=False, min_training_cnr=2.0)):
        with pytest.raises(ValueError, match="realistic generator"):
            make_training_subjects(plan, [1])


def test_realistic_subjects_draw_a_slice_profile_and_label_the_nominal_box() -> None:
    geometry = axial_geometry(matrix=96, slices=8, slice_spacing=6.0)
    phantom = make_realistic_phantom(0, geometry)
    profiles = [make_realistic_phantom(seed, geometry).slice_profile for seed in range(12)]
    assert all(p is not None and 0.45 <= p.half_width <= 0.6 and 0.01 <= p.edge <= 0.22
               for p in profiles)
    assert len({p.edge for p in profiles if p is not None}) == 12
    with_profile = render_series(phantom, geometry, Contrast.T2_FLAIR)
    boxed = render_series(replace(phantom, slice_profile=None), geometry, Contrast.T2_FLAIR)
    assert phantom.lesions and np.array_equal(with_profile.labels, boxed.labels)
    assert not np.array_equal(with_profile.pixels, boxed.pixels)
