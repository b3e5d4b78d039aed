"""Evaluation of a two-stage engine on synthetic subjects it has never seen (`lacuna evaluate`),
with the metrics of :mod:`training.metrics`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from models.inference import LesionSegmentation, TwoStageEngine
from training.metrics import SizeBin, SubjectCounts, bootstrap_intervals, count_subject, summarise
from training.phantom import (
    Contrast,
    axial_geometry,
    make_phantom,
    render_series,
)

# The paper's figures and this project's targets (issue 5), in percent.
PAPER = {"dice": 74.21, "detection_precision_iou06": 91.76, "classification_precision": 92.89}
TARGETS = {"dice": 80.0, "detection_precision_iou06": 95.0, "detection_recall_iou06": 90.0,
           "classification_precision": 95.0}
# Lesion thresholds tried by calibration (probability of the primary network's lesion channel).
CANDIDATE_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
# Smallest lesions kept (voxels of a 3D component) tried by calibration.
CANDIDATE_MIN_VOXELS = (1, 2, 3)


@dataclass(frozen=True)
class SubjectInputs:
    """One held-out subject as the engine takes it, with its ground truth on the T2 grid."""

    t2: np.ndarray
    t1: np.ndarray | None
    t1_available: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    slice_spacing_mm: float
    truth: np.ndarray

    @property
    def voxel_volume_mm3(self) -> float:
        return self.pixel_spacing_mm[0] * self.pixel_spacing_mm[1] * self.slice_spacing_mm


def subject_inputs(seed: int, varied: bool = False) -> SubjectInputs:
    """Render ``seed``'s subject: T2 and T1 FLAIR on one 256x256x24 geometry, or with ``varied``
    a subject of the richer generator, each series on its own scanner geometry, written as
    DICOM and read back through the node's own slice pairing
    (:func:`node.services.volumes.load_study_volumes`)."""
    if varied:
        from training.dataset import varied_study

        volumes, truth = varied_study(seed)
        return SubjectInputs(volumes.t2, volumes.t1, volumes.t1_available, volumes.pixel_spacing,
                             volumes.slice_spacing, truth)
    geometry = axial_geometry()
    phantom = make_phantom(seed, geometry)
    t2 = render_series(phantom, geometry, Contrast.T2_FLAIR)
    t1 = render_series(phantom, geometry, Contrast.T1_FLAIR, seed_offset=1)
    return SubjectInputs(t2.pixels.astype(np.float32), t1.pixels.astype(np.float32),
                         np.ones(geometry.slices, dtype=bool), geometry.pixel_spacing,
                         geometry.slice_spacing, t2.labels)


def segment_subject(engine: Any, subject: SubjectInputs,
                    probability: np.ndarray | None = None) -> LesionSegmentation:
    """The engine's segmentation of ``subject`` (``probability``: its primary output, if known)."""
    extra = {} if probability is None else {"probability": probability}
    return engine.segment(subject.t2, subject.t1, subject.t1_available,
                          subject.pixel_spacing_mm, subject.slice_spacing_mm, **extra)


def labels_at_least(segmentation: LesionSegmentation, voxels: int) -> np.ndarray:
    """``segmentation``'s label map with only its lesions of at least ``voxels`` voxels: what the
    engine gives with that ``min_lesion_voxels``, since it classifies each lesion on its own."""
    kept = [lesion.number for lesion in segmentation.lesions if lesion.voxel_count >= voxels]
    return np.where(np.isin(segmentation.lesion_numbers, kept), segmentation.labels, 0)


def evaluate_subjects(
    engine: Any, seeds: list[int],
    progress: Callable[[int, int], None] | None = None,
    varied: bool = False,
) -> list[SubjectCounts]:
    """Render each seed's subject (:func:`subject_inputs`), segment and classify it with
    ``engine`` (anything with the :meth:`TwoStageEngine.segment` signature), and count it
    against its ground truth."""
    counts = []
    for done, seed in enumerate(seeds, start=1):
        subject = subject_inputs(seed, varied)
        counts.append(count_subject(subject.truth, segment_subject(engine, subject).labels,
                                    subject.voxel_volume_mm3))
        if progress is not None:
            progress(done, len(seeds))
    return counts


@dataclass(frozen=True)
class OperatingPoint:
    """How the primary network's probabilities become lesions: voxels at ``lesion_threshold``
    or above, in 3D components of at least ``min_lesion_voxels`` voxels."""

    lesion_threshold: float
    min_lesion_voxels: int

    @property
    def key(self) -> str:
        """``"0.50/2"``: the operating point's name in manifests and cards."""
        return f"{self.lesion_threshold:.2f}/{self.min_lesion_voxels}"


def calibrate_operating_point(
    engine: TwoStageEngine, seeds: list[int], thresholds: Sequence[float] = CANDIDATE_THRESHOLDS,
    min_voxels: Sequence[int] = CANDIDATE_MIN_VOXELS, varied: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[OperatingPoint, list[tuple[OperatingPoint, dict[str, float | None]]]]:
    """The operating point, among ``thresholds`` x ``min_voxels``, with the best detection F1
    at IoU > 0.6 on ``seeds`` (ties: higher Dice, then the threshold nearest 0.5, then the
    minimum size nearest 2), and every candidate's metrics. ``seeds`` must be validation
    subjects, never the ones the model is judged on."""
    subjects = []
    for done, seed in enumerate(seeds, start=1):
        subject = subject_inputs(seed, varied)
        subjects.append((subject, engine.predict_lesion_probability(subject.t2)))
        if progress is not None:
            progress(done, len(seeds))
    base = engine.settings
    swept = []
    try:
        for threshold in thresholds:
            # Segment and classify once per threshold, keeping every lesion; each minimum size
            # then only drops the smaller ones.
            engine.settings = replace(base, lesion_threshold=float(threshold),
                                      min_lesion_voxels=min(min_voxels))
            segmentations = [(s.truth, segment_subject(engine, s, probability))
                             for s, probability in subjects]
            for voxels in min_voxels:
                metrics = summarise([count_subject(truth, labels_at_least(segmentation, voxels))
                                     for truth, segmentation in segmentations])
                swept.append((OperatingPoint(float(threshold), int(voxels)), metrics))
    finally:
        engine.settings = base
    best = max(swept, key=lambda item: (item[1]["detection_f1_iou06"] or 0.0,
                                        item[1]["dice"] or 0.0,
                                        -abs(item[0].lesion_threshold - 0.5),
                                        -abs(item[0].min_lesion_voxels - 2)))
    return best[0], swept


def evaluate_engine(engine: TwoStageEngine, seeds: list[int],
                    varied: bool = False) -> dict[str, float | None]:
    """Every metric of :func:`training.metrics.summarise` over ``seeds``."""
    return summarise(evaluate_subjects(engine, seeds, varied=varied))


def percent_cell(value: float | None, missing: str = "-") -> str:
    """A percentage for a markdown table, two decimals; ``missing`` where there is none."""
    return missing if value is None else f"{value:.2f}"


def report_markdown(metrics: dict[str, float | None],
                    intervals: dict[str, tuple[float, float]], title: str) -> str:
    """A markdown table: each metric with its 95 % interval, the paper's figure and the target."""
    names = {
        "dice": "Dice of lesion area",
        "detection_precision_iou06": "detection precision (IoU > 0.6)",
        "detection_recall_iou06": "detection recall (IoU > 0.6)",
        "detection_f1_iou06": "detection F1 (IoU > 0.6)",
        "detection_precision_any": "detection precision (any overlap)",
        "detection_recall_any": "detection recall (any overlap)",
        "classification_precision": "classification precision (both classes)",
        "classification_precision_FCI": "classification precision FCI",
        "classification_recall_FCI": "classification recall FCI",
        "classification_precision_LACI": "classification precision LACI",
        "classification_recall_LACI": "classification recall LACI",
    }

    lines = [f"### {title}", "",
             f"{metrics['subjects']:.0f} held-out synthetic subjects, "
             f"{metrics['true_lesions']:.0f} true and {metrics['predicted_lesions']:.0f} "
             "predicted lesions; 95 % intervals are bootstraps over subjects.", "",
             "| metric | measured | 95 % interval | paper | target | met |",
             "| --- | --- | --- | --- | --- | --- |"]
    for key, name in names.items():
        low_high = intervals.get(key)
        target = TARGETS.get(key)
        met = "" if target is None else ("yes" if (metrics[key] or 0) >= target else "no")
        lines.append(f"| {name} | {percent_cell(metrics[key], 'n/a')} | "
                     f"{'n/a' if low_high is None else f'{low_high[0]:.2f}-{low_high[1]:.2f}'} | "
                     f"{percent_cell(PAPER.get(key), 'n/a')} | {percent_cell(target, 'n/a')} | {met} |")
    return "\n".join(lines) + "\n"


def size_markdown(bins: Sequence[SizeBin]) -> str:
    """A markdown table of detection recall by true lesion volume
    (:func:`training.metrics.recall_by_size`)."""
    lines = ["| true lesion volume (mm3) | true lesions | detection recall (IoU > 0.6) | "
             "detection recall (any overlap) |", "| --- | --- | --- | --- |"]
    for b in bins:
        span = f"{b.low_mm3:g}-{b.high_mm3:g}" if b.high_mm3 is not None else f">= {b.low_mm3:g}"
        lines.append(f"| {span} | {b.lesions} | {percent_cell(b.recall_iou06)} | "
                     f"{percent_cell(b.recall_any)} |")
    return "\n".join(lines) + "\n"


__all__ = ["PAPER", "TARGETS", "OperatingPoint", "SubjectInputs", "bootstrap_intervals",
           "calibrate_operating_point", "evaluate_engine", "evaluate_subjects", "labels_at_least",
           "percent_cell", "report_markdown", "size_markdown", "subject_inputs"]
