"""Lesion metrics, the paper's and a radiologist's: pure functions on label volumes, no I/O.

* Dice of the lesion area (all classes together), pooled over subjects.
* Per-lesion detection: 3D connected components (26-connectivity) of truth and prediction are
  paired one to one, highest IoU first. A prediction is a true positive at IoU > 0.6 (the
  paper's rule) and, separately, at any overlap. Precision, recall and F1 for both.
* Detection recall by true lesion volume (:func:`recall_by_size`): where the misses are.
* Classification of the lesions paired at any overlap: precision and recall per class (FCI,
  LACI). Precision alone rewards finding few lesions, so recall is always reported beside it.
* FROC (:func:`froc`): sensitivity (any overlap) at 0.25-4 false lesions per study, from
  candidates of the probability map scored by their peak probability.
* Where it fails (:func:`breakdown`): recall by true lesion size, diameter and contrast,
  precision by predicted size; detection by scanner (matrix, vendor).
* Calibration of the classifier's certainty (:func:`reliability`): expected calibration error.
* How found lesions are outlined (:func:`outlines`): of those at IoU <= 0.6, which reach a
  slice the truth lacks, miss one it holds, or are too small or too large in-plane.

Percentages throughout. Confidence intervals are percentile bootstraps over subjects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import find_objects
from skimage.measure import label

PAPER_IOU = 0.6
CLASSES = {1: "FCI", 2: "LACI"}  # label values of truth and prediction


# Candidates for the FROC: 3D components of the lesion probability at or above this.
FROC_THRESHOLD = 0.1
FROC_RATES = (0.25, 0.5, 1.0, 2.0, 4.0)  # false lesions per study


@dataclass(frozen=True)
class LesionPair:
    """A true lesion and the predicted lesion paired with it, with their classes and the
    classifier's certainty of the predicted class (None: not known or unclassified)."""

    iou: float
    true_class: int
    predicted_class: int
    certainty: float | None = None
    outline: Outline | None = None


@dataclass(frozen=True)
class Outline:
    """A paired prediction's shape against its true lesion, in voxels: on the slices (first
    axis) both reach, ``predicted_shared`` against ``true_shared``; ``predicted_off`` on
    slices the truth does not reach; ``true_off`` on slices the prediction does not."""

    predicted_shared: int
    true_shared: int
    predicted_off: int
    true_off: int


@dataclass(frozen=True)
class TrueLesion:
    """A true lesion's volume (mm3) and the IoU of the prediction paired with it (0: none);
    its voxel count, largest in-plane diameter (mm) and T2 FLAIR contrast where known."""

    volume_mm3: float
    iou: float
    voxels: int = 0
    diameter_mm: float = 0.0
    contrast: float | None = None


@dataclass(frozen=True)
class PredictedLesion:
    """A predicted lesion's voxel count, largest in-plane diameter (mm) and the IoU of the
    true lesion paired with it (0: a false lesion)."""

    voxels: int
    diameter_mm: float
    iou: float


@dataclass(frozen=True)
class Candidate:
    """A FROC candidate: its peak lesion probability, then its probability mass (the sum over
    its voxels), which orders candidates whose peaks tie (a network sure of many spots gives
    many peaks of exactly 1.0), and the (subject-local) numbers of the true lesions it
    touches."""

    score: float
    mass: float
    true_lesions: tuple[int, ...]


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
    predicted_lesion_outcomes: tuple[PredictedLesion, ...] = field(default_factory=tuple)
    candidates: tuple[Candidate, ...] = field(default_factory=tuple)
    scanner: tuple[str, ...] = ()  # e.g. ("512x512", "SIEMENS"): groups of breakdown()


def _components(labels: np.ndarray) -> tuple[np.ndarray, int]:
    components, count = label(labels > 0, connectivity=labels.ndim, return_num=True)
    return components, int(count)


def _majority(labels: np.ndarray, mask: np.ndarray) -> int:
    values = labels[mask]
    values = values[values > 0]
    return int(np.bincount(values).argmax()) if values.size else 0


def count_subject(truth: np.ndarray, predicted: np.ndarray,
                  voxel_volume_mm3: float = 1.0, *,
                  pixel_spacing_mm: tuple[float, float] | None = None,
                  lesion_ids: np.ndarray | None = None,
                  contrasts: dict[int, float] | None = None,
                  laci_probability: np.ndarray | None = None,
                  probability: np.ndarray | None = None,
                  scanner: tuple[str, ...] = ()) -> SubjectCounts:
    """Counts for one subject. ``truth`` and ``predicted`` hold 0 (background), 1 (FCI) and
    2 (LACI) on one grid; any other positive value counts as a lesion of no class.
    ``voxel_volume_mm3`` only scales the true lesions' volumes in ``true_lesion_outcomes``.

    Optional, for :func:`breakdown`, :func:`froc` and :func:`reliability`: the in-plane
    ``pixel_spacing_mm`` (diameters), each true voxel's lesion number (``lesion_ids``) with
    each number's T2 FLAIR contrast, each predicted voxel's P(LACI) (``laci_probability``),
    the lesion ``probability`` map (FROC candidates) and the ``scanner`` tags."""
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
    predicted_iou: dict[int, float] = {}
    for iou, t, p in candidates:  # one to one, best IoU first
        if t in used_true or p in used_predicted:
            continue
        used_true.add(t)
        used_predicted.add(p)
        paired_iou[t] = float(iou)
        predicted_iou[p] = float(iou)
        predicted_mask = predicted_components == p
        predicted_class = _majority(predicted, predicted_mask)
        certainty = None
        if laci_probability is not None and predicted_class in CLASSES:
            p_laci = float(laci_probability[predicted_mask].mean())
            certainty = p_laci if predicted_class == 2 else 1.0 - p_laci
        true_mask = true_components == t
        pairs.append(LesionPair(float(iou), _majority(truth, true_mask), predicted_class,
                                certainty, _outline(true_mask, predicted_mask)))
    true_slices = find_objects(true_components)
    predicted_slices = find_objects(predicted_components)

    def diameter(components: np.ndarray, box: tuple[slice, ...] | None, number: int) -> float:
        if pixel_spacing_mm is None or box is None:
            return 0.0
        from models.inference import in_plane_diameter_mm

        coords = np.argwhere(components[box] == number) + [s.start for s in box]
        return in_plane_diameter_mm(coords, pixel_spacing_mm)

    def contrast(t: int) -> float | None:
        if lesion_ids is None or contrasts is None:
            return None
        ids = lesion_ids[true_components == t]
        ids = ids[ids > 0]
        return contrasts.get(int(np.bincount(ids).argmax())) if ids.size else None

    return SubjectCounts(
        intersection=int(np.count_nonzero((truth > 0) & (predicted > 0))),
        predicted_voxels=int(np.count_nonzero(predicted)),
        true_voxels=int(np.count_nonzero(truth)),
        true_lesions=true_count,
        predicted_lesions=predicted_count,
        pairs=tuple(pairs),
        true_lesion_outcomes=tuple(
            TrueLesion(float(true_sizes[t]) * voxel_volume_mm3, paired_iou.get(t, 0.0),
                       int(true_sizes[t]), diameter(true_components, true_slices[t - 1], t),
                       contrast(t))
            for t in range(1, true_count + 1)),
        predicted_lesion_outcomes=tuple(
            PredictedLesion(int(predicted_sizes[p]),
                            diameter(predicted_components, predicted_slices[p - 1], p),
                            predicted_iou.get(p, 0.0))
            for p in range(1, predicted_count + 1)),
        candidates=() if probability is None else _candidates(probability, true_components),
        scanner=scanner,
    )


def _outline(true_mask: np.ndarray, predicted_mask: np.ndarray) -> Outline:
    true_per_slice = true_mask.reshape(len(true_mask), -1).sum(axis=1)
    predicted_per_slice = predicted_mask.reshape(len(predicted_mask), -1).sum(axis=1)
    shared = (true_per_slice > 0) & (predicted_per_slice > 0)
    return Outline(int(predicted_per_slice[shared].sum()), int(true_per_slice[shared].sum()),
                   int(predicted_per_slice[~shared].sum()), int(true_per_slice[~shared].sum()))


def _candidates(probability: np.ndarray, true_components: np.ndarray) -> tuple[Candidate, ...]:
    """Components of ``probability`` >= :data:`FROC_THRESHOLD`, each scored by its peak."""
    components, count = label(probability >= FROC_THRESHOLD, connectivity=probability.ndim,
                              return_num=True)
    candidates = []
    for number, box in enumerate(find_objects(components), start=1):
        if box is None:
            continue
        inside = components[box] == number
        touched = np.unique(true_components[box][inside])
        values = probability[box][inside]
        candidates.append(Candidate(float(values.max()), float(values.sum()),
                                    tuple(int(t) for t in touched if t > 0)))
    return tuple(candidates)


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


def froc(subjects: Sequence[SubjectCounts], rates: Sequence[float] = FROC_RATES
         ) -> list[tuple[float, float | None]]:
    """(false lesions per study, sensitivity in percent) for each of ``rates``: the highest
    share of true lesions touched by a kept candidate, over every cutoff on the candidates'
    (peak, mass) whose kept candidates that touch no true lesion average at most that rate
    per study."""
    true_total = sum(s.true_lesions for s in subjects)
    if not subjects or not true_total:
        return [(rate, None) for rate in rates]
    scored = sorted((((c.score, c.mass), index, c.true_lesions) for index, s in enumerate(subjects)
                     for c in s.candidates), key=lambda item: item[0], reverse=True)
    found: set[tuple[int, int]] = set()
    false = 0
    best = dict.fromkeys(rates, 0.0)
    position = 0
    while position < len(scored):
        cutoff = scored[position][0]
        while position < len(scored) and scored[position][0] == cutoff:  # ties kept together
            _, index, touched = scored[position]
            if touched:
                found.update((index, t) for t in touched)
            else:
                false += 1
            position += 1
        rate_now = false / len(subjects)
        for rate in rates:
            if rate_now <= rate:
                best[rate] = max(best[rate], 100.0 * len(found) / true_total)
    return [(rate, round(best[rate], 2)) for rate in rates]


@dataclass(frozen=True)
class BinRow:
    """One row of :func:`breakdown`: a group's lesion count and its detection figures
    (percent): recall at IoU > 0.6 and any overlap of true lesions, or precision of predicted
    ones, as the group says."""

    group: str
    lesions: int
    at_iou06: float | None
    any_overlap: float | None


def _rows(name: str, items: Sequence[tuple[float, float]],
          edges: Sequence[float], unit: str) -> list[BinRow]:
    """Items (value, IoU) in bins split at ``edges``: the share with IoU > 0.6 and > 0."""
    rows = []
    bounds = list(zip([None, *edges], [*edges, None], strict=True))
    for low, high in bounds:
        inside = [iou for value, iou in items
                  if (low is None or value >= low) and (high is None or value < high)]
        span = (f"< {high:g}" if low is None else f">= {low:g}" if high is None
                else f"{low:g}-{high:g}")
        rows.append(BinRow(f"{name} {span} {unit}".strip(), len(inside),
                           _percent(sum(1 for i in inside if i > PAPER_IOU), len(inside)),
                           _percent(sum(1 for i in inside if i > 0), len(inside))))
    return rows


def breakdown(subjects: Sequence[SubjectCounts]) -> dict[str, list[BinRow]]:
    """Where detection fails: recall of true lesions by voxels (< 10, 10-50, > 50), largest
    in-plane diameter (< 3, 3-6, > 6 mm) and T2 FLAIR contrast (x white matter, where
    known); precision of predicted lesions by the same size bins; recall and precision by
    scanner group (each of a subject's ``scanner`` tags)."""
    true = [t for s in subjects for t in s.true_lesion_outcomes]
    predicted = [p for s in subjects for p in s.predicted_lesion_outcomes]
    result = {
        "recall by true lesion voxels": _rows("", [(t.voxels, t.iou) for t in true],
                                              (10, 50), "voxels"),
        "recall by true lesion diameter": _rows("", [(t.diameter_mm, t.iou) for t in true],
                                                (3.0, 6.0), "mm"),
        "precision by predicted lesion voxels": _rows("", [(p.voxels, p.iou) for p in predicted],
                                                      (10, 50), "voxels"),
        "precision by predicted lesion diameter": _rows(
            "", [(p.diameter_mm, p.iou) for p in predicted], (3.0, 6.0), "mm"),
    }
    contrasts = [(t.contrast, t.iou) for t in true if t.contrast is not None]
    if contrasts:
        result["recall by T2 FLAIR contrast (x white matter)"] = _rows(
            "", contrasts, (1.5, 2.0), "")
    tags = sorted({tag for s in subjects for tag in s.scanner})
    if tags:
        rows = []
        for tag in tags:
            group = [s for s in subjects if tag in s.scanner]
            metrics = summarise(group)
            rows.append(BinRow(f"{tag} ({len(group)} studies): recall", int(metrics["true_lesions"] or 0),
                               metrics["detection_recall_iou06"], metrics["detection_recall_any"]))
            rows.append(BinRow(f"{tag} ({len(group)} studies): precision",
                               int(metrics["predicted_lesions"] or 0),
                               metrics["detection_precision_iou06"],
                               metrics["detection_precision_any"]))
        result["by scanner"] = rows
    return result


# In-plane size ratios (predicted / true voxels on shared slices) called too small, too large.
TOO_SMALL, TOO_LARGE = 0.8, 1.25


def outlines(subjects: Sequence[SubjectCounts]) -> list[tuple[str, int, int]]:
    """How the found lesions (paired at any overlap) outlined at IoU <= 0.6 fail, as rows of
    (what, lesions, voxels): the predicted voxels on slices the truth does not reach, the true
    voxels on slices the prediction misses, and on shared slices those too small (predicted
    under :data:`TOO_SMALL` x true), too large (over :data:`TOO_LARGE` x) or about the right
    size but displaced (voxels: the true ones on shared slices). A lesion can be in several
    rows; the first row counts every such lesion and their true voxels."""
    poor = [pair.outline for s in subjects for pair in s.pairs
            if 0 < pair.iou <= PAPER_IOU and pair.outline is not None]
    small = [o for o in poor if o.predicted_shared < TOO_SMALL * o.true_shared]
    large = [o for o in poor if o.predicted_shared > TOO_LARGE * o.true_shared]
    displaced = [o for o in poor
                 if TOO_SMALL * o.true_shared <= o.predicted_shared <= TOO_LARGE * o.true_shared]
    return [
        ("found, outlined at IoU <= 0.6", len(poor),
         sum(o.true_shared + o.true_off for o in poor)),
        ("reach a slice the truth does not (predicted voxels there)",
         sum(1 for o in poor if o.predicted_off), sum(o.predicted_off for o in poor)),
        ("miss a slice the truth reaches (true voxels there)",
         sum(1 for o in poor if o.true_off), sum(o.true_off for o in poor)),
        (f"too small in-plane (< {TOO_SMALL:g} x; true minus predicted on shared slices)",
         len(small), sum(o.true_shared - o.predicted_shared for o in small)),
        (f"too large in-plane (> {TOO_LARGE:g} x; predicted minus true on shared slices)",
         len(large), sum(o.predicted_shared - o.true_shared for o in large)),
        ("about the right size, displaced (true voxels on shared slices)", len(displaced),
         sum(o.true_shared for o in displaced)),
    ]


@dataclass(frozen=True)
class Reliability:
    """The classifier's certainty against its accuracy on lesions paired with a true one:
    ``bins`` of (low, high, lesions, mean certainty %, accuracy %) and the expected calibration
    error (percent points: the lesion-weighted mean gap)."""

    bins: tuple[tuple[float, float, int, float, float], ...]
    expected_calibration_error: float | None
    lesions: int


def reliability(subjects: Sequence[SubjectCounts], bins: int = 5) -> Reliability:
    """:class:`Reliability` over equal-width certainty bins on [0.5, 1]."""
    samples = [(p.certainty, p.predicted_class == p.true_class)
               for s in subjects for p in s.pairs
               if p.certainty is not None and p.true_class in CLASSES]
    edges = np.linspace(0.5, 1.0, bins + 1)
    rows = []
    gap = 0.0
    for index, (low, high) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        last = index == bins - 1
        inside = [(c, ok) for c, ok in samples if low <= c < high or (last and c == high)]
        if not inside:
            continue
        confidence = float(np.mean([c for c, _ in inside]))
        accuracy = float(np.mean([ok for _, ok in inside]))
        gap += len(inside) * abs(accuracy - confidence)
        rows.append((float(low), float(high), len(inside), round(100 * confidence, 2),
                     round(100 * accuracy, 2)))
    return Reliability(tuple(rows), round(100 * gap / len(samples), 2) if samples else None,
                       len(samples))


def bootstrap_statistic(subjects: Sequence[SubjectCounts],
                        statistic: Callable[[Sequence[SubjectCounts]], float | None],
                        resamples: int = 1000, seed: int = 0, level: float = 0.95
                        ) -> tuple[float, float] | None:
    """A percentile bootstrap interval of any ``statistic`` of subjects, resampling whole
    subjects; None when it is never defined."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        value = statistic([subjects[i] for i in rng.integers(len(subjects), size=len(subjects))])
        if value is not None:
            values.append(value)
    if not values:
        return None
    tail = 100 * (1 - level) / 2
    return (round(float(np.percentile(values, tail)), 2),
            round(float(np.percentile(values, 100 - tail)), 2))
