"""The richer synthetic generator: scanner geometries within the issue's ranges, and irregular
lesion outlines (pure geometry; no anatomy maps needed)."""

from __future__ import annotations

import numpy as np

from training.phantom import (
    PhantomLesion,
    SliceProfile,
    _lesion_fraction,
    axial_geometry,
    scanner_geometries,
)
from training.truth import EARLIER_TRUTH_FRACTION, TRUTH_FRACTION, lesion_voxels


def test_scanner_geometries_span_the_protocols_we_expect() -> None:
    spacings, slice_spacings, tilts, different = [], [], [], 0
    for seed in range(200):
        t2, t1 = scanner_geometries(np.random.default_rng(seed))
        for geometry in (t2, t1):
            spacings.append(geometry.pixel_spacing[0])
            slice_spacings.append(geometry.slice_spacing)
            assert geometry.slice_thickness <= geometry.slice_spacing
            assert 100 <= geometry.slices * geometry.slice_spacing <= 150  # the whole brain
            assert np.isclose(np.linalg.norm(geometry.normal), 1.0)
        tilts.append(np.degrees(np.arcsin(t2.column_cosine[2])))
        different += (t2.rows, t2.slice_spacing) != (t1.rows, t1.slice_spacing)
    assert 0.43 <= min(spacings) < 0.5 and 0.9 < max(spacings) <= 1.12
    assert 3.0 <= min(slice_spacings) < 3.3 and 5.7 < max(slice_spacings) <= 6.0
    assert min(tilts) < -8 and max(tilts) > 8
    assert different == 200  # T1 FLAIR always on its own geometry


def test_irregular_lesions_are_not_ellipsoids() -> None:
    geometry = axial_geometry(matrix=128, fov_mm=64.0, slices=20, slice_spacing=1.0,
                              centre=(0.0, 0.0, 0.0))
    plain = PhantomLesion(1, "FCI", (0.0, 0.0, 0.0), (6.0, 6.0, 6.0),
                          ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    bumpy = PhantomLesion(1, "FCI", (0.0, 0.0, 0.0), (6.0, 6.0, 6.0), plain.rotation,
                          bumps=((1.0, 0.0, 0.0, 0.4), (0.0, 1.0, 0.0, 0.3)))
    sphere = _lesion_fraction(plain, geometry) >= 0.5
    irregular = _lesion_fraction(bumpy, geometry) >= 0.5
    middle = geometry.slices // 2
    # The sphere is symmetric left-right; the bumps push out along +x and +y only.
    assert np.array_equal(sphere[middle], sphere[middle][:, ::-1])
    columns = np.flatnonzero(irregular[middle].any(axis=0))
    centre = (geometry.columns - 1) / 2
    assert columns.max() - centre > centre - columns.min() + 3
    assert irregular.sum() != sphere.sum()


def test_truth_is_half_a_voxel_with_the_most_covered_voxel_as_fallback() -> None:
    geometry = axial_geometry(matrix=64, fov_mm=57.5, slices=5, slice_spacing=5.0,
                              centre=(0.0, 0.0, 0.0))
    axes = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    half = geometry.pixel_spacing[0] / 2  # a voxel centre in-plane
    # A flat dot: 2 of 5 through-slice samples inside in each of its 5 voxels: never half a
    # voxel, so it keeps its most-covered voxels (all five tie).
    flat = _lesion_fraction(PhantomLesion(1, "FCI", (half, half, 0.5), (1.2, 1.2, 1.0), axes), geometry)
    assert sorted(np.unique(flat)) == [0.0, np.float32(0.4)]
    assert lesion_voxels(flat).sum() == 5
    # A peaked dot: one voxel 3 of 5 inside, a ring of 4 at 2 of 5: the one voxel.
    peaked = _lesion_fraction(PhantomLesion(2, "FCI", (half, half, 0.25), (1.3, 1.3, 1.3), axes),
                              geometry)
    assert peaked.max() == np.float32(0.6) and (peaked == np.float32(0.4)).sum() == 4
    assert TRUTH_FRACTION == 0.5
    assert np.array_equal(lesion_voxels(peaked), peaked >= 0.5) and lesion_voxels(peaked).sum() == 1
    # The earlier rule, reported beside it, marks the ring too.
    assert lesion_voxels(peaked, EARLIER_TRUTH_FRACTION).sum() == 5
    # A large lesion: its half-covered voxels, not its 0.4 rim.
    large = _lesion_fraction(PhantomLesion(3, "LACI", (0.0, 0.0, 0.5), (4.0, 4.0, 3.0), axes), geometry)
    assert (large == np.float32(0.4)).any()
    assert np.array_equal(lesion_voxels(large), large >= 0.5)
    # A lesion only grazing the slices is marked at its most-covered voxels.
    grazing = _lesion_fraction(PhantomLesion(4, "FCI", (half, half, 2.0), (1.3, 1.3, 0.6), axes),
                               geometry)
    assert grazing.max() == np.float32(0.2)
    assert np.array_equal(lesion_voxels(grazing), grazing == grazing.max())
    # Off the stack: nothing to mark.
    outside = _lesion_fraction(PhantomLesion(5, "FCI", (0.0, 0.0, 80.0), (1.2, 1.2, 1.0), axes), geometry)
    assert not lesion_voxels(outside).any()


def test_blobs_make_one_elongated_lesion_and_in_plane_samples_give_partial_volume() -> None:
    geometry = axial_geometry(matrix=64, fov_mm=64.0, slices=10, slice_spacing=2.0,
                              centre=(0.0, 0.0, 0.0))
    axes = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    single = PhantomLesion(1, "FCI", (0.0, 0.0, 0.0), (1.5, 1.5, 1.5), axes)
    chain = PhantomLesion(1, "FCI", (0.0, 0.0, 0.0), (1.5, 1.5, 1.5), axes,
                          blobs=((2.0, 0.0, 0.0, 0.8), (4.0, 0.0, 0.0, 0.7)))
    one = _lesion_fraction(single, geometry, in_plane=2) > 0
    three = _lesion_fraction(chain, geometry, in_plane=2) > 0
    rows, columns = np.nonzero(three.any(axis=0))
    assert np.ptp(columns) > 1.5 * np.ptp(rows)  # longer along x, where the blobs lie
    assert three.sum() > 1.4 * one.sum()
    from skimage.measure import label
    assert label(three, connectivity=3).max() == 1  # one lesion, not three
    # With in-plane samples a pixel can be partly inside: fractions other than n/5.
    fractions = np.unique(_lesion_fraction(single, geometry, in_plane=2))
    assert any(abs(f * 5 - round(f * 5)) > 1e-3 for f in fractions)


def test_a_slice_profile_shows_a_lesion_beside_its_slab_and_never_moves_the_truth() -> None:
    geometry = axial_geometry(matrix=64, fov_mm=57.5, slices=5, slice_spacing=5.0,
                              centre=(0.0, 0.0, 0.0))
    axes = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    # 4 mm tall, centred 1 mm below the middle slice's centre: inside its slab only.
    lesion = PhantomLesion(1, "FCI", (0.0, 0.0, -1.0), (3.0, 3.0, 2.0), axes)
    nominal = _lesion_fraction(lesion, geometry, in_plane=2)
    assert nominal[[0, 1, 3, 4]].max() == 0.0 and nominal[2].max() >= 0.5
    # A sharp edge is (nearly) the nominal box; a Gaussian-like one spreads signal into the
    # slice beside the slab and shows less of the lesion on its own slice.
    sharp, soft = SliceProfile(0.5, 0.01), SliceProfile(0.5, 0.2)
    for profile in (sharp, soft):
        offsets, weights = profile.samples()
        assert np.isclose(weights.sum(), 1.0) and np.allclose(offsets, -offsets[::-1])
    boxed = _lesion_fraction(lesion, geometry, in_plane=2, profile=sharp)
    seen = _lesion_fraction(lesion, geometry, in_plane=2, profile=soft)
    # (16 profile samples against the box's 5: close, not equal)
    assert abs(boxed[2].max() - nominal[2].max()) < 0.1 and boxed[1].max() < 0.01
    assert 0.05 < seen[1].max() < 0.3 and seen[2].max() < boxed[2].max() - 0.08
    # The truth is the nominal box whatever the image's profile.
    assert lesion_voxels(nominal).sum() > 0 and not lesion_voxels(nominal)[1].any()

