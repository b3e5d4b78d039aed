"""Lesion metrics on hand-made volumes whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate import size_markdown
from training.metrics import (
    bootstrap_intervals,
    count_subject,
    outlines,
    recall_by_size,
    summarise,
)


def volume() -> np.ndarray:
    return np.zeros((4, 32, 32), np.uint8)


def test_a_perfect_prediction_scores_100_everywhere() -> None:
    truth = volume()
    truth[1, 2:5, 2:5] = 1
    truth[2, 20:24, 20:24] = 2
    metrics = summarise([count_subject(truth, truth.copy())])
    assert metrics["dice"] == 100.0 and metrics["true_lesions"] == 2
    for key in ("detection_precision_iou06", "detection_recall_iou06", "detection_f1_iou06",
                "classification_precision_FCI", "classification_recall_LACI",
                "classification_precision"):
        assert metrics[key] == 100.0, key


def test_the_iou_rule_separates_a_loose_detection_from_a_tight_one() -> None:
    truth, predicted = volume(), volume()
    truth[1, 0:4, 0:4] = 1  # 16 voxels
    predicted[1, 0:4, 2:6] = 1  # 8 shared, union 24: IoU 1/3
    truth[2, 10:15, 10:15] = 2  # 25 voxels
    predicted[2, 10:15, 10:14] = 2  # 20 shared: IoU 0.8
    predicted[3, 28:30, 28:30] = 1  # a false positive
    metrics = summarise([count_subject(truth, predicted)])
    assert metrics["detection_precision_iou06"] == pytest.approx(100 / 3, abs=0.01)
    assert metrics["detection_recall_iou06"] == 50.0
    assert metrics["detection_precision_any"] == pytest.approx(200 / 3, abs=0.01)
    assert metrics["detection_recall_any"] == 100.0
    assert metrics["dice"] == pytest.approx(100 * 2 * 28 / (41 + 40), abs=0.01)


def test_pairs_are_one_to_one_and_classes_are_scored_both_ways() -> None:
    truth, predicted = volume(), volume()
    truth[1, 0:6, 0:6] = 2  # one LACI...
    predicted[1, 0:6, 0:3] = 1  # ...split into two predictions, both called FCI
    predicted[1, 0:6, 4:6] = 1
    truth[2, 20:23, 20:23] = 1  # an FCI called FCI
    predicted[2, 20:23, 20:23] = 1
    metrics = summarise([count_subject(truth, predicted)])
    assert metrics["predicted_lesions"] == 3 and metrics["detection_recall_any"] == 100.0
    assert metrics["detection_precision_any"] == pytest.approx(200 / 3, abs=0.01)
    assert metrics["classification_precision_FCI"] == 50.0  # one of two paired FCI calls
    assert metrics["classification_recall_FCI"] == 100.0
    assert metrics["classification_recall_LACI"] == 0.0
    assert metrics["classification_precision_LACI"] is None  # never predicted
    assert metrics["classification_precision"] == 50.0


def test_recall_by_size_puts_each_true_lesion_in_its_volume_bin() -> None:
    truth, predicted = volume(), volume()
    truth[1, 0:2, 0:2] = 1  # 4 voxels of 2 mm3: 8 mm3, found loosely (IoU 4/9)
    predicted[1, 0:3, 0:3] = 1
    truth[1, 10:12, 10:12] = 2  # 8 mm3, missed
    truth[2, 20:30, 20:30] = 1  # 100 voxels: 200 mm3, found exactly
    predicted[2, 20:30, 20:30] = 1
    counts = count_subject(truth, predicted, voxel_volume_mm3=2.0)
    assert sorted(o.volume_mm3 for o in counts.true_lesion_outcomes) == [8.0, 8.0, 200.0]
    small, middle, medium, large = recall_by_size([counts], edges_mm3=(30.0, 100.0, 500.0))
    assert (small.lesions, small.recall_iou06, small.recall_any) == (2, 0.0, 50.0)
    assert middle.lesions == 0 and middle.recall_iou06 is None
    assert (medium.low_mm3, medium.high_mm3, medium.recall_iou06) == (100.0, 500.0, 100.0)
    assert large.high_mm3 is None and large.lesions == 0
    table = size_markdown([small, large])
    assert "| 0-30 | 2 | 0.00 | 50.00 |" in table and "| >= 500 | 0 | - | - |" in table


def test_nothing_to_find_and_nothing_found() -> None:
    metrics = summarise([count_subject(volume(), volume())])
    assert metrics["dice"] is None and metrics["detection_precision_iou06"] is None


def test_bootstrap_resamples_subjects() -> None:
    subjects = []
    for n in range(10):
        truth, predicted = volume(), volume()
        truth[1, 0:4, 0:4] = 1
        predicted[1, 0:4, 0:4 if n < 5 else 1] = 1  # half the subjects miss their lesion
        subjects.append(count_subject(truth, predicted))
    low, high = bootstrap_intervals(subjects, resamples=300)["detection_recall_iou06"]
    assert low < 50.0 < high and 0.0 <= low and high <= 100.0
    with pytest.raises(ValueError, match="differ in shape"):
        count_subject(volume(), np.zeros((2, 2, 2), np.uint8))


def test_outlines_say_how_a_found_lesion_misses_its_truth() -> None:
    truth, predicted = np.zeros((6, 32, 32), np.uint8), np.zeros((6, 32, 32), np.uint8)
    truth[1, 0:6, 0:6] = 1  # 36 voxels; found as a 2 x 6 strip: too small, IoU 1/3
    predicted[1, 0:2, 0:6] = 1
    truth[3, 10:14, 10:14] = 1  # 16 voxels; predicted 8 x 8 (64): too large, IoU 0.25
    predicted[3, 8:16, 8:16] = 1
    truth[3:5, 20:24, 20:24] = 1  # two slices of 16; predicted on the first and the one
    predicted[2:4, 20:24, 22:26] = 1  # before it, shifted: a missed and an extra slice
    truth[4, 0:4, 28:32] = 2  # outlined well (IoU 1): not a poor outline
    predicted[4, 0:4, 28:32] = 2
    rows = {what.split(" (")[0]: (lesions, voxels)
            for what, lesions, voxels in outlines([count_subject(truth, predicted)])}
    assert rows["found, outlined at IoU <= 0.6"] == (3, 36 + 16 + 32)
    assert rows["reach a slice the truth does not"] == (1, 16)
    assert rows["miss a slice the truth reaches"] == (1, 16)
    assert rows["too small in-plane"] == (1, 24)
    assert rows["too large in-plane"] == (1, 48)
    assert rows["about the right size, displaced"] == (1, 16)
