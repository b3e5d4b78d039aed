import numpy as np
import pytest

from node.domain.completeness import is_stable
from node.domain.geometry import (
    GeometryError,
    SlicePlane,
    pair_slices,
    pairing_problem,
    slice_spacing,
    sort_along_normal,
    stack_indices,
)
from node.domain.jobs import InvalidTransition, JobState, check_transition


def plane(uid: str, z: float, spacing: float = 1.0, rows: int = 4, origin_xy: float = 0.0,
          frame: str = "1.9") -> SlicePlane:
    return SlicePlane(
        sop_instance_uid=uid, frame_of_reference_uid=frame,
        position=(origin_xy, origin_xy, z), row_cosine=(1.0, 0.0, 0.0),
        column_cosine=(0.0, 1.0, 0.0), pixel_spacing=(spacing, spacing), rows=rows, columns=rows,
    )


def test_sort_uses_position_along_the_normal_not_arrival_order() -> None:
    planes = [plane("3", 10.0), plane("1", 0.0), plane("2", 5.0)]
    assert [p.sop_instance_uid for p in sort_along_normal(planes)] == ["1", "2", "3"]
    assert slice_spacing(sort_along_normal(planes)) == 5.0


def test_sort_refuses_mixed_orientation_and_duplicate_positions() -> None:
    tilted = SlicePlane("x", "1.9", (0, 0, 0), (1, 0, 0), (0, 0, 1), (1, 1), 4, 4)
    with pytest.raises(GeometryError, match="orientation"):
        sort_along_normal([plane("a", 0.0), tilted])
    with pytest.raises(GeometryError, match="same position|share one position"):
        sort_along_normal([plane("a", 0.0), plane("b", 0.0)])


def test_pairing_tolerates_offsets_and_leaves_gaps_unpaired() -> None:
    t2 = [plane(str(k), 5.0 * k) for k in range(4)]
    t1 = [plane("a", 0.4), plane("b", 10.9), plane("c", 15.2)]
    assert pair_slices(t2, t1) == [0, None, 1, 2]


def test_pairing_reaches_half_the_wider_spacing_when_t1_slices_lie_farther_apart() -> None:
    t2 = [plane(str(k), 3.0 * k) for k in range(5)]  # 0, 3, 6, 9, 12 mm
    t1 = [plane(str(k), 6.0 * k) for k in range(3)]  # 0, 6, 12 mm
    assert pair_slices(t2, t1) == [0, 0, 1, 1, 2]  # ties go to the first
    assert pair_slices(t2, t1, tolerance_mm=1.5) == [0, None, 1, None, 2]


def tilted_plane(uid: str, z: float, degrees: float, rows: int = 100) -> SlicePlane:
    """A 1 mm ``rows`` x ``rows`` image tilted about the x axis, its middle at (0, 0, z)."""
    t = np.radians(degrees)
    column = (0.0, float(np.cos(t)), float(np.sin(t)))
    half = (rows - 1) / 2
    position = (-half, -half * column[1], z - half * column[2])
    return SlicePlane(uid, "1.9", position, (1.0, 0.0, 0.0), column, (1.0, 1.0), rows, rows)


def test_pairing_measures_tilted_stacks_at_the_middle_of_the_image() -> None:
    t2 = [tilted_plane(str(k), 5.0 * k, 0.0, rows=200) for k in range(4)]
    t1 = [tilted_plane(str(k), 5.0 * k + 1.0, 4.0, rows=200) for k in range(4)]
    # At the first pixel, 100 mm from the middle, the 4 degrees move the T1 slice 6.9 mm:
    # measured there, T2 slice k would pair with T1 slice k + 1.
    assert pair_slices(t2, t1) == [0, 1, 2, 3]
    assert pairing_problem(t2, t1) is None


def test_pairing_refuses_stacks_tilted_more_than_the_limit_and_says_so() -> None:
    t2 = [tilted_plane(str(k), 5.0 * k, 0.0) for k in range(4)]
    t1 = [tilted_plane(str(k), 5.0 * k, 12.0) for k in range(4)]
    assert pair_slices(t2, t1) == [None] * 4
    assert pairing_problem(t2, t1) == (
        "T1 FLAIR is tilted 12.0 degrees against T2 FLAIR (at most 10 are paired).")


def test_pairing_needs_the_same_frame_of_reference() -> None:
    t2 = [plane("1", 0.0)]
    assert pair_slices(t2, [plane("a", 0.0, frame="2.9")]) == [None]
    assert pairing_problem(t2, [plane("a", 0.0, frame="2.9")]) == (
        "T1 and T2 FLAIR are in different frames of reference.")


def test_stack_indices_map_between_unequal_matrices() -> None:
    target = plane("t", 0.0, spacing=1.0, rows=4)
    source = plane("s", 0.0, spacing=0.5, rows=8, origin_xy=-0.5)
    indices = stack_indices(target, [source])
    assert indices.shape == (3, 4, 4)
    assert (indices[0] == 0).all()
    # Target pixel (r, c) sits at (c, r) mm; the source's pixel (i, j) at (-0.5 + 0.5 j, ...).
    np.testing.assert_allclose(indices[1, :, 0], [1.0, 3.0, 5.0, 7.0])
    np.testing.assert_allclose(indices[2, 0, :], [1.0, 3.0, 5.0, 7.0])


def test_stack_indices_take_the_nearest_slice_for_each_pixel_of_a_tilted_plane() -> None:
    source = [plane(str(k), 5.0 * k, rows=20) for k in range(4)]  # z = 0, 5, 10, 15 mm
    # Rows of the target climb 0.5 mm in z per column: 30 degrees against the source.
    tilted = SlicePlane("t", "1.9", (0.0, 0.0, 2.2), (np.sqrt(0.75), 0.0, 0.5), (0.0, 1.0, 0.0),
                        (1.0, 1.0), 20, 20)
    indices = stack_indices(tilted, source)
    z = 2.2 + 0.5 * np.arange(20)
    np.testing.assert_array_equal(indices[0, 0], np.floor(z / 5.0 + 0.5))
    np.testing.assert_allclose(indices[1, :, 0], np.arange(20))  # rows run along y
    np.testing.assert_allclose(indices[2, 0], np.sqrt(0.75) * np.arange(20))


def test_stack_indices_mark_pixels_beyond_the_stack() -> None:
    source = [plane(str(k), 5.0 * k) for k in range(4)]  # last slice at 15 mm
    assert (stack_indices(plane("in", 17.0), source)[0] == 3).all()
    assert (stack_indices(plane("out", 18.0), source)[0] == -1).all()
    assert (stack_indices(plane("before", -3.0), source)[0] == -1).all()
    assert (stack_indices(plane("near", 2.0), [source[0]])[0] == 0).all()  # one slice: no spacing


def test_stable_after_the_quiet_period() -> None:
    from datetime import UTC, datetime, timedelta

    last = datetime(2026, 1, 1, tzinfo=UTC)
    assert not is_stable(last, last + timedelta(seconds=29), 30)
    assert is_stable(last, last + timedelta(seconds=30), 30)


def test_job_transitions() -> None:
    check_transition(JobState.QUEUED, JobState.RUNNING)
    check_transition(JobState.RUNNING, JobState.DONE)
    with pytest.raises(InvalidTransition, match="done to running"):
        check_transition(JobState.DONE, JobState.RUNNING)


def test_retry_policy() -> None:
    from node.domain.jobs import retry_delay, state_after_failure

    assert retry_delay(1, 10, 600, 0.0) == 5.0
    assert retry_delay(1, 10, 600, 0.999) == pytest.approx(10.0, rel=1e-3)
    assert retry_delay(4, 10, 600, 0.0) == 40.0
    assert retry_delay(20, 10, 600, 0.0) == 300.0  # capped
    with pytest.raises(ValueError, match="jitter"):
        retry_delay(1, 10, 600, 1.0)
    assert state_after_failure(1, 5, retryable=True) is JobState.QUEUED
    assert state_after_failure(5, 5, retryable=True) is JobState.FAILED
    assert state_after_failure(1, 5, retryable=False) is JobState.FAILED
