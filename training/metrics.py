"""Lesion metrics, the paper's and a radiologist's: pure functions on label volumes, no I/O.

* Dice of the lesion area (all classes together), pooled over subjects.
* Per-lesion detection: 3D connected components (26-connectivity) of truth and prediction are
  paired one to one, highest IoU first. A prediction is a true positive at IoU > 0.6 (the
  paper's rule) and, separately, at any overlap. Precision, recall and F1 for both.
* Detection recall by true lesion volume (:func:`recall_by_size`): where the misses are.
* Classification of the lesions paired at any overlap: precision and recall per class (FCI,
  LACI). Precision alone rewards finding few lesions, so recall is always reported beside it.

Percentages throughout. Confidence intervals are percentile bootstraps over subjects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from skimage.measure import label

PAPER_IOU = 0.6
CLASSES = {1: "FCI", 2: "LACI"}  # label values of truth and prediction


@dataclass(frozen=True)
class LesionPair:
    """A true lesion and the predicted lesion paired with it, with their classes."""

    iou: float
    true_class: int
    predicted_class: int


@dataclass(frozen=True)
class TrueLesion:
    """A true lesion's volume (mm3) and the IoU of the prediction paired with it (0: none)."""

    volume_mm3: float
    iou: float


@dataclass(frozen=True)
class SizeBin:
    """Detection recall (percent) of the true lesions whose volume lies in [low, high) mm3."""

    low_mm3: float
    high_mm3: float | None  # None: no upper bound
    lesions: int
    recall_iou06: float | None
    recall_any: float | None


@dataclass(frozen=True)
class SubjectCounts:
    """What one subject contributes to every metric (voxel and lesion counts)."""

    intersection: int
    predicted_voxels: int
    true_voxels: int
    true_lesions: int
    predicted_lesions: int
    pairs: tuple[LesionPair, ...] = field(default_factory=tuple)
    true_lesion_outcomes: tuple[TrueLesion, ...] = field(default_factory=tuple)


def _components(labels: np.ndarray) -> tuple[np.ndarray, int]:
    components, count = label(labels > 0, connectivity=labels.ndim, return_num=True)
    return components, int(count)


def _majority(labels: np.ndarray, mask: np.ndarray) -> int:
    values = labels[mask]
    values = values[values > 0]
    return int(np.bincount(values).argmax()) if values.size else 0


def count_subject(truth: np.ndarray, predicted: np.ndarray,
                  voxel_volume_mm3: float = 1.0) -> SubjectCounts:
    """Counts for one subject. ``truth`` and ``predicted`` hold 0 (background), 1 (FCI) and
    2 (LACI) on one grid; any other positive value counts as a lesion of no class.
    ``voxel_volume_mm3`` only scales the true lesions' volumes in ``true_lesion_outcomes``."""
    if truth.shape != predicted.shape:
        raise ValueError(f"truth {truth.shape} and prediction {predicted.shape} differ in shape")
    true_components, true_count = _components(truth)
    predicted_components, predicted_count = _components(predicted)
    overlap = (true_components > 0) & (predicted_components > 0)
    # Every overlapping (true, predicted) pair with its intersection, from one pass.
    pair_codes = true_components[overlap].astype(np.int64) * (predicted_count + 1) + \
        predicted_components[overlap]
    codes, intersections = np.unique(pair_codes, return_counts=True)
    true_sizes = np.bincount(true_components.ravel(), minlength=true_count + 1)
    predicted_sizes = np.bincount(predicted_components.ravel(), minlength=predicted_count + 1)
    candidates = []
    for code, intersection in zip(codes, intersections, strict=True):
        t, p = divmod(int(code), predicted_count + 1)
        union = int(true_sizes[t] + predicted_sizes[p] - intersection)
        candidates.append((intersection / union, t, p))
    candidates.sort(reverse=True)
    used_true: set[int] = set()
    used_predicted: set[int] = set()
    pairs = []
    paired_iou: dict[int, float] = {}
    for iou, t, p in candidates:  # one to one, best IoU first
        if t in used_true or p in used_predicted:
            continue
        used_true.add(t)
        used_predicted.add(p)
        paired_iou[t] = float(iou)
        pairs.append(LesionPair(float(iou), _majority(truth, true_components == t),
                                _majority(predicted, predicted_components == p)))
    return SubjectCounts(
        intersection=int(np.count_nonzero((truth > 0) & (predicted > 0))),
        predicted_voxels=int(np.count_nonzero(predicted)),
        true_voxels=int(np.count_nonzero(truth)),
        true_lesions=true_count,
        predicted_lesions=predicted_count,
        pairs=tuple(pairs),
        true_lesion_outcomes=tuple(
            TrueLesion(float(true_sizes[t]) * voxel_volume_mm3, paired_iou.get(t, 0.0))
            for t in range(1, true_count + 1)),
    )


def _percent(numerator: float, denominator: float) -> float | None:
    return round(100.0 * numerator / denominator, 2) if denominator else None


def _f1(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None or precision + recall == 0:
        return None
    return round(2 * precision * recall / (precision + recall), 2)


def summarise(subjects: Sequence[SubjectCounts]) -> dict[str, float | None]:
    """Every metric over ``subjects`` pooled (lesions and voxels summed, not averaged per
    subject). None where a metric has nothing to count."""
    total = {key: sum(getattr(s, key) for s in subjects) for key in
             ("intersection", "predicted_voxels", "true_voxels", "true_lesions", "predicted_lesions")}
    pairs = [pair for s in subjects for pair in s.pairs]
    metrics: dict[str, float | None] = {
        "subjects": float(len(subjects)),
        "true_lesions": float(total["true_lesions"]),
        "predicted_lesions": float(total["predicted_lesions"]),
        "dice": _percent(2 * total["intersection"], total["predicted_voxels"] + total["true_voxels"]),
    }
    for name, threshold in (("iou06", PAPER_IOU), ("any", 0.0)):
        hits = sum(1 for pair in pairs if pair.iou > threshold)
        precision = _percent(hits, total["predicted_lesions"])
        recall = _percent(hits, total["true_lesions"])
        metrics[f"detection_precision_{name}"] = precision
        metrics[f"detection_recall_{name}"] = recall
        metrics[f"detection_f1_{name}"] = _f1(precision, recall)
    for value, name in CLASSES.items():
        correct = sum(1 for p in pairs if p.true_class == value and p.predicted_class == value)
        metrics[f"classification_precision_{name}"] = _percent(
            correct, sum(1 for p in pairs if p.predicted_class == value))
        metrics[f"classification_recall_{name}"] = _percent(
            correct, sum(1 for p in pairs if p.true_class == value))
    correct = sum(1 for p in pairs if p.predicted_class == p.true_class and p.true_class in CLASSES)
    classified = sum(1 for p in pairs if p.predicted_class in CLASSES)
    # The paper's single "classification precision": correct classes among classified lesions.
    metrics["classification_precision"] = _percent(correct, classified)
    return metrics


def recall_by_size(subjects: Sequence[SubjectCounts],
                   edges_mm3: Sequence[float] = (30.0, 100.0, 500.0)) -> list[SizeBin]:
    """Detection recall at IoU > 0.6 and at any overlap of the true lesions pooled over
    ``subjects``, in volume bins split at ``edges_mm3`` (ascending)."""
    outcomes = [lesion for s in subjects for lesion in s.true_lesion_outcomes]
    bounds: list[tuple[float, float | None]] = list(zip([0.0, *edges_mm3], [*edges_mm3, None],
                                                        strict=True))
    bins = []
    for low, high in bounds:
        inside = [o for o in outcomes if o.volume_mm3 >= low and (high is None or o.volume_mm3 < high)]
        bins.append(SizeBin(low, high, len(inside),
                            _percent(sum(1 for o in inside if o.iou > PAPER_IOU), len(inside)),
                            _percent(sum(1 for o in inside if o.iou > 0), len(inside))))
    return bins


def bootstrap_intervals(
    subjects: Sequence[SubjectCounts], resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of every metric of :func:`summarise`, resampling whole
    subjects (never lesions or slices, which are not independent)."""
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(resamples):
        chosen = [subjects[i] for i in rng.integers(len(subjects), size=len(subjects))]
        for key, value in summarise(chosen).items():
            if value is not None:
                samples.setdefault(key, []).append(value)
    tail = 100 * (1 - level) / 2
    return {key: (round(float(np.percentile(values, tail)), 2),
                  round(float(np.percentile(values, 100 - tail)), 2))
            for key, values in samples.items() if key not in ("subjects",)}
