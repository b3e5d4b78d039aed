"""Where detection fails and how sure the classifier is: FROC, size and contrast bins, the
reliability of the class certainty, and temperature scaling (training.metrics, calibrate)."""

from __future__ import annotations

import numpy as np

from training.calibrate import expected_calibration_error, fit_temperature
from training.metrics import breakdown, count_subject, froc, reliability, summarise


def _volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth with a 1-voxel, a 12-voxel and a 60-voxel lesion; a prediction that finds the
    two larger ones and adds one false lesion; a probability map with a faint extra spot."""
    truth = np.zeros((4, 40, 40), np.uint8)
    truth[1, 5, 5] = 1
    truth[1, 10:13, 10:14] = 2
    truth[0:3, 20:24, 20:25] = 1
    predicted = np.zeros_like(truth)
    predicted[1, 10:13, 10:14] = 2
    predicted[0:3, 20:24, 20:25] = 2  # found, wrong class
    predicted[3, 35, 35] = 1  # false
    probability = np.where(predicted > 0, 0.9, 0.0).astype(np.float32)
    probability[3, 35, 35] = 0.6
    probability[1, 5, 5] = 0.3  # the tiny true lesion, below the operating threshold
    probability[2, 30, 5] = 0.2  # a faint false candidate
    return truth, predicted, probability


def test_breakdown_puts_each_lesion_in_its_size_bin() -> None:
    truth, predicted, probability = _volume()
    laci = np.where(predicted == 2, 0.8, 0.1).astype(np.float32)
    counts = count_subject(truth, predicted, 1.0, pixel_spacing_mm=(0.5, 0.5),
                           laci_probability=laci, probability=probability,
                           scanner=("256x256", "GE"))
    rows = {row.group: row for row in breakdown([counts])["recall by true lesion voxels"]}
    assert rows["< 10 voxels"].lesions == 1 and rows["< 10 voxels"].any_overlap == 0.0
    assert rows["10-50 voxels"].lesions == 1 and rows["10-50 voxels"].at_iou06 == 100.0
    assert rows[">= 50 voxels"].lesions == 1 and rows[">= 50 voxels"].at_iou06 == 100.0
    diameters = {row.group: row.lesions for row in breakdown([counts])["recall by true lesion diameter"]}
    assert diameters == {"< 3 mm": 2, "3-6 mm": 1, ">= 6 mm": 0}  # 0.5 mm pixels: 1, 2 and 3 mm
    precision = {row.group: row for row in breakdown([counts])["precision by predicted lesion voxels"]}
    assert precision["< 10 voxels"].at_iou06 == 0.0  # the false one-voxel lesion
    scanner = [row.group for row in breakdown([counts])["by scanner"]]
    assert any(group.startswith("GE (1 studies)") for group in scanner)
    assert summarise([counts])["detection_recall_any"] == 66.67


def test_froc_counts_candidates_above_each_cutoff() -> None:
    truth, predicted, probability = _volume()
    counts = count_subject(truth, predicted, probability=probability)
    assert len(counts.candidates) == 5  # three true-touching, two false
    points = dict(froc([counts], rates=(0.0, 0.5, 1.0)))
    assert points[0.0] == 66.67  # the two large lesions at 0.9, before any false candidate
    assert points[0.5] == 66.67  # the tiny lesion's 0.3 comes after the false 0.6 spot
    assert points[1.0] == 100.0  # at 0.3: all three found, one false candidate


def test_reliability_and_temperature_scaling() -> None:
    rng = np.random.default_rng(0)
    # An overconfident classifier: says 99 % and is right 80 % of the time.
    classes = rng.random(500) < 0.5
    right = rng.random(500) < 0.8
    samples = [(0.99 if (c == r) else 0.01, 2 if c else 1) for c, r in zip(classes, right, strict=True)]
    temperature = fit_temperature(samples)
    assert temperature > 2
    before = expected_calibration_error(samples, 1.0)
    after = expected_calibration_error(samples, temperature)
    assert before is not None and after is not None and before > 15 and after < 3
    assert fit_temperature([]) == 1.0
    # reliability() reads the certainty each paired lesion carries.
    truth, predicted, _ = _volume()
    laci = np.where(predicted == 2, 0.95, 0.05).astype(np.float32)
    result = reliability([count_subject(truth, predicted, laci_probability=laci)])
    assert result.lesions == 2  # the two found lesions, one right (LACI) and one wrong
    assert result.expected_calibration_error == 45.0  # both 95 % sure, half right


def test_froc_orders_candidates_whose_peaks_tie_by_their_mass() -> None:
    from training.metrics import Candidate, SubjectCounts

    # A saturated network: every candidate peaks at exactly 1.0; the true lesion's is the
    # largest spot, the false ones small.
    subject = SubjectCounts(0, 0, 0, true_lesions=1, predicted_lesions=0, candidates=(
        Candidate(1.0, 40.0, (1,)), Candidate(1.0, 2.0, ()), Candidate(1.0, 1.0, ())))
    assert dict(froc([subject], rates=(0.25, 1.0, 4.0))) == {0.25: 100.0, 1.0: 100.0, 4.0: 100.0}
    # Without the mass to order them, the tie would be taken whole: 2 false lesions at once.
    tied = SubjectCounts(0, 0, 0, 1, 0, candidates=(
        Candidate(1.0, 1.0, (1,)), Candidate(1.0, 1.0, ()), Candidate(1.0, 1.0, ())))
    assert dict(froc([tied], rates=(1.0, 2.0))) == {1.0: 0.0, 2.0: 100.0}
