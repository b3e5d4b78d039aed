"""Evaluation of a two-stage engine on synthetic subjects it has never seen (`lacuna-train evaluate`),
with the metrics of :mod:`training.metrics`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from models.inference import TwoStageEngine
from models.package import ModelManifest
from node.domain.lesions import LesionSegmentation
from training.metrics import (
    SizeBin,
    SubjectCounts,
    bootstrap_intervals,
    bootstrap_statistic,
    breakdown,
    count_subject,
    froc,
    outlines,
    reliability,
    summarise,
)
from training.parallel import map_on_cores
from training.phantom import (
    Contrast,
    axial_geometry,
    make_phantom,
    render_series,
)

# The paper's figures and this project's targets (issue 22, on the independent generator), in
# percent.
PAPER = {"dice": 74.21, "detection_precision_iou06": 91.76, "classification_precision": 92.89}
TARGETS = {"dice": 80.0, "detection_precision_iou06": 90.0, "detection_recall_iou06": 85.0,
           "classification_precision_FCI": 95.0, "classification_precision_LACI": 95.0}
# Lesion thresholds tried by calibration (probability of the primary network's lesion channel).
CANDIDATE_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
# Smallest lesions kept (voxels of a 3D component) tried by calibration.
CANDIDATE_MIN_VOXELS = (1, 2, 3)
# Outline thresholds tried by calibration below each lesion threshold (hysteresis), beside the
# plain threshold.
CANDIDATE_OUTLINE_THRESHOLDS = (0.2, 0.3, 0.4, 0.5)


# Where evaluation subjects come from: the first generator (one 256x256x24 geometry), the
# richer one on varied scanners, the realistic one (issue 22) on varied scanners (the bundled
# model's training distribution since 0.6), or the independent test generator, which no model
# is trained, calibrated or chosen on (training.independent).
GENERATORS = ("standard", "varied", "realistic", "independent")


@dataclass(frozen=True)
class SubjectInputs:
    """One held-out subject as the engine takes it, with its ground truth on the T2 grid.
    The independent generator also gives the truth under the earlier rule
    (``truth_earlier``), each true voxel's lesion number (``lesion_ids``) with each lesion's
    T2 FLAIR contrast (``contrasts``), and the scanner (``vendor``, ``matrix``)."""

    t2: np.ndarray
    t1: np.ndarray | None
    t1_available: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    slice_spacing_mm: float
    truth: np.ndarray
    truth_earlier: np.ndarray | None = None
    lesion_ids: np.ndarray | None = None
    contrasts: dict[int, float] | None = None
    vendor: str = "Lacuna Synthetic"
    matrix: int = 0

    @property
    def voxel_volume_mm3(self) -> float:
        return self.pixel_spacing_mm[0] * self.pixel_spacing_mm[1] * self.slice_spacing_mm


def subject_inputs(seed: int, generator: str = "standard") -> SubjectInputs:
    """Render ``seed``'s subject of ``generator`` (:data:`GENERATORS`): "standard", T2 and T1
    FLAIR on one 256x256x24 geometry; otherwise each series on its own scanner geometry,
    written as DICOM and read back through the node's own slice pairing
    (:func:`node.services.volumes.load_study_volumes`)."""
    if generator not in GENERATORS:
        raise ValueError(f"unknown generator {generator!r}; known: {', '.join(GENERATORS)}")
    if generator == "independent":
        from training.independent import independent_subject

        s = independent_subject(seed)
        return SubjectInputs(s.t2, s.t1, s.t1_available, s.pixel_spacing_mm, s.slice_spacing_mm,
                             s.truth, s.truth_earlier, s.lesion_ids,
                             {lesion.number: lesion.contrast for lesion in s.lesions},
                             s.vendor, s.matrix)
    if generator in ("varied", "realistic"):
        from training.dataset import varied_study

        volumes, truth = varied_study(seed, realistic=generator == "realistic")
        return SubjectInputs(volumes.t2, volumes.t1, volumes.t1_available, volumes.pixel_spacing,
                             volumes.slice_spacing, truth, matrix=volumes.t2.shape[1])
    geometry = axial_geometry()
    phantom = make_phantom(seed, geometry)
    t2 = render_series(phantom, geometry, Contrast.T2_FLAIR)
    t1 = render_series(phantom, geometry, Contrast.T1_FLAIR, seed_offset=1)
    return SubjectInputs(t2.pixels.astype(np.float32), t1.pixels.astype(np.float32),
                         np.ones(geometry.slices, dtype=bool), geometry.pixel_spacing,
                         geometry.slice_spacing, t2.labels, matrix=geometry.rows)


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


def rendered_subjects(seeds: list[int], generator: str) -> Iterator[SubjectInputs]:
    """:func:`subject_inputs` of each seed in order, rendered ahead on the other cores for
    the slow scanner generators."""
    if generator == "standard":
        return (subject_inputs(seed, generator) for seed in seeds)
    return map_on_cores(partial(subject_inputs, generator=generator), seeds)


def evaluate_subjects(
    engine: Any, seeds: list[int],
    progress: Callable[[int, int], None] | None = None,
    generator: str = "standard",
    earlier_truth: list[SubjectCounts] | None = None,
) -> list[SubjectCounts]:
    """Render each seed's subject (:func:`subject_inputs`), segment and classify it with
    ``engine`` (anything with the :meth:`TwoStageEngine.segment` signature), and count it
    against its ground truth, with everything :func:`training.metrics.breakdown`,
    :func:`~training.metrics.froc` and :func:`~training.metrics.reliability` need. Where the
    generator gives the earlier rule's truth too, ``earlier_truth`` (if given) gets those
    counts."""
    counts: list[SubjectCounts] = []
    for done, subject in enumerate(rendered_subjects(seeds, generator), start=1):
        # The ablation's primary-only engine segments but gives no probability map (no FROC).
        probability = (engine.predict_lesion_probability(subject.t2, subject.pixel_spacing_mm)
                       if hasattr(engine, "predict_lesion_probability") else None)
        segmentation = segment_subject(engine, subject, probability)
        laci = np.zeros(segmentation.labels.shape, np.float32)
        for lesion in segmentation.lesions:
            if lesion.laci_probability is not None:
                laci[segmentation.lesion_numbers == lesion.number] = lesion.laci_probability
        scanner = (f"{subject.matrix}x{subject.matrix}" if subject.matrix else "",
                   subject.vendor)
        for truth, into in ((subject.truth, counts), (subject.truth_earlier, earlier_truth)):
            if truth is None or into is None:
                continue
            into.append(count_subject(
                truth, segmentation.labels, subject.voxel_volume_mm3,
                pixel_spacing_mm=subject.pixel_spacing_mm, lesion_ids=subject.lesion_ids,
                contrasts=subject.contrasts, laci_probability=laci, probability=probability,
                scanner=tuple(tag for tag in scanner if tag)))
        if progress is not None:
            progress(done, len(seeds))
    return counts


@dataclass(frozen=True)
class OperatingPoint:
    """How the primary network's probabilities become lesions: 3D components of at least
    ``min_lesion_voxels`` voxels at ``lesion_threshold`` or above, or (``outline_threshold``
    not None) of voxels at ``outline_threshold`` or above that reach ``lesion_threshold``."""

    lesion_threshold: float
    min_lesion_voxels: int
    outline_threshold: float | None = None

    @property
    def key(self) -> str:
        """``"0.50/2"``, or ``"0.70>0.30/2"`` outlined at 0.30: the operating point's name in
        manifests and cards."""
        outline = "" if self.outline_threshold is None else f">{self.outline_threshold:.2f}"
        return f"{self.lesion_threshold:.2f}{outline}/{self.min_lesion_voxels}"

    @property
    def description(self) -> str:
        """The operating point in words, as cards and the CLI say it."""
        outlined = ("" if self.outline_threshold is None else
                    f", outlined to the connected voxels at {self.outline_threshold:.2f} or above "
                    "(hysteresis)")
        return (f"lesion threshold {self.lesion_threshold:.2f}{outlined}, lesions of at least "
                f"{self.min_lesion_voxels} voxel(s)")

    @classmethod
    def of(cls, manifest: ModelManifest) -> OperatingPoint:
        """``manifest``'s operating point."""
        return cls(manifest.lesion_threshold, manifest.min_lesion_voxels,
                   manifest.outline_threshold)


def mirroring_description(mirror_axes: tuple[str, ...]) -> str:
    """A package's test-time mirroring in words, as cards say it after its networks: "" for
    none."""
    if not mirror_axes:
        return ""
    return (" with test-time mirroring (each slice also mirrored along its "
            f"{' and '.join(mirror_axes)}, the primary network's probabilities averaged)")


def outline_candidates(lesion_threshold: float,
                       outlines: Sequence[float] = CANDIDATE_OUTLINE_THRESHOLDS
                       ) -> list[float | None]:
    """The outline thresholds calibration tries with ``lesion_threshold``: None (the plain
    threshold), then each of ``outlines`` below it."""
    return [None, *(float(o) for o in outlines if o < lesion_threshold - 1e-9)]


def calibrate_operating_point(
    engine: TwoStageEngine, seeds: list[int], thresholds: Sequence[float] = CANDIDATE_THRESHOLDS,
    min_voxels: Sequence[int] = CANDIDATE_MIN_VOXELS, generator: str = "standard",
    progress: Callable[[int, int], None] | None = None,
    classifications: list[tuple[float, int]] | None = None,
    outlines: Sequence[float] = CANDIDATE_OUTLINE_THRESHOLDS,
) -> tuple[OperatingPoint, list[tuple[OperatingPoint, dict[str, float | None]]]]:
    """The operating point, among ``thresholds`` x their :func:`outline_candidates` from
    ``outlines`` x ``min_voxels``, with the best detection F1 at IoU > 0.6 on ``seeds`` (ties:
    higher Dice, then the plain threshold, then the threshold nearest 0.5, then the minimum
    size nearest 2), and every candidate's metrics. ``seeds`` must be validation
    subjects, never the ones the model is judged on. ``classifications`` (if given) gets, at
    the chosen point, each predicted lesion's P(LACI) before temperature scaling and the true
    class under it (1 FCI, 2 LACI), for :func:`training.calibrate.fit_temperature`."""
    subjects = []
    for done, subject in enumerate(rendered_subjects(seeds, generator), start=1):
        subjects.append((subject, engine.predict_lesion_probability(subject.t2,
                                                                    subject.pixel_spacing_mm)))
        if progress is not None:
            progress(done, len(seeds))
    base = engine.settings
    swept = []
    try:
        for threshold, outline in ((t, o) for t in thresholds for o in
                                   outline_candidates(t, outlines)):
            # Segment and classify once per threshold, keeping every lesion; each minimum size
            # then only drops the smaller ones. P(LACI) as the network gives it (temperature 1).
            engine.settings = replace(base, lesion_threshold=float(threshold),
                                      outline_threshold=outline,
                                      min_lesion_voxels=min(min_voxels), laci_temperature=1.0)
            segmentations = [(s.truth, segment_subject(engine, s, probability))
                             for s, probability in subjects]
            for voxels in min_voxels:
                metrics = summarise([count_subject(truth, labels_at_least(segmentation, voxels))
                                     for truth, segmentation in segmentations])
                swept.append((OperatingPoint(float(threshold), int(voxels), outline), metrics))
    finally:
        engine.settings = base
    best = max(swept, key=lambda item: (item[1]["detection_f1_iou06"] or 0.0,
                                        item[1]["dice"] or 0.0,
                                        item[0].outline_threshold is None,
                                        -abs(item[0].lesion_threshold - 0.5),
                                        -abs(item[0].min_lesion_voxels - 2)))
    if classifications is not None:
        # Once more at the chosen point (keeping every threshold's label volumes instead would
        # hold gigabytes for 40 subjects at 512x512).
        try:
            engine.settings = replace(base, lesion_threshold=best[0].lesion_threshold,
                                      outline_threshold=best[0].outline_threshold,
                                      min_lesion_voxels=best[0].min_lesion_voxels,
                                      laci_temperature=1.0)
            for subject, probability in subjects:
                segmentation = segment_subject(engine, subject, probability)
                for lesion in segmentation.lesions:
                    if lesion.laci_probability is None:
                        continue
                    under = subject.truth[segmentation.lesion_numbers == lesion.number]
                    under = under[under > 0]
                    if under.size:
                        classifications.append((lesion.laci_probability,
                                                int(np.bincount(under).argmax())))
        finally:
            engine.settings = base
    return best[0], swept


def evaluate_engine(engine: TwoStageEngine, seeds: list[int],
                    generator: str = "standard") -> dict[str, float | None]:
    """Every metric of :func:`training.metrics.summarise` over ``seeds``."""
    return summarise(evaluate_subjects(engine, seeds, generator=generator))


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


def froc_markdown(subjects: Sequence[SubjectCounts]) -> str:
    """FROC points with bootstrap intervals by subject."""
    points = froc(subjects)
    lines = ["| false lesions per study | sensitivity (any overlap) | 95 % interval |",
             "| --- | --- | --- |"]
    for index, (rate, sensitivity) in enumerate(points):
        def at_rate(group: Sequence[SubjectCounts], i: int = index) -> float | None:
            return froc(group)[i][1]

        interval = bootstrap_statistic(subjects, at_rate, resamples=300)
        lines.append(f"| {rate:g} | {percent_cell(sensitivity)} | "
                     f"{'-' if interval is None else f'{interval[0]:.2f}-{interval[1]:.2f}'} |")
    false_per_study = (sum(s.predicted_lesions for s in subjects)
                       - sum(1 for s in subjects for p in s.pairs if p.iou > 0)) / max(len(subjects), 1)
    lesion_free = [s for s in subjects if s.true_lesions == 0]
    clean = sum(1 for s in lesion_free if s.predicted_lesions == 0)
    lines += ["", f"At the operating point: {false_per_study:.2f} false lesions per study "
              f"(predicted lesions paired with no true one); {clean} of {len(lesion_free)} "
              "lesion-free studies with no lesion reported."]
    return "\n".join(lines) + "\n"


def breakdown_markdown(subjects: Sequence[SubjectCounts]) -> str:
    """Every table of :func:`training.metrics.breakdown`."""
    out = []
    for title, rows in breakdown(subjects).items():
        out += [f"**{title}**", "", "| group | lesions | at IoU > 0.6 | at any overlap |",
                "| --- | --- | --- | --- |"]
        out += [f"| {row.group} | {row.lesions} | {percent_cell(row.at_iou06)} | "
                f"{percent_cell(row.any_overlap)} |" for row in rows]
        out.append("")
    return "\n".join(out)


def outline_markdown(subjects: Sequence[SubjectCounts]) -> str:
    """The table of :func:`training.metrics.outlines`."""
    lines = ["| outline | lesions | voxels |", "| --- | --- | --- |"]
    lines += [f"| {what} | {lesions} | {voxels} |" for what, lesions, voxels in outlines(subjects)]
    return "\n".join(lines) + "\n"


def reliability_markdown(subjects: Sequence[SubjectCounts]) -> str:
    """The classifier's reliability table and expected calibration error."""
    result = reliability(subjects)
    lines = ["| certainty | lesions | mean certainty | accuracy |", "| --- | --- | --- | --- |"]
    lines += [f"| {low:.1f}-{high:.1f} | {n} | {confidence:.2f} | {accuracy:.2f} |"
              for low, high, n, confidence, accuracy in result.bins]
    lines += ["", f"Expected calibration error: {percent_cell(result.expected_calibration_error)} "
              f"points over {result.lesions} classified lesions paired with a true one."]
    return "\n".join(lines) + "\n"


__all__ = ["GENERATORS", "PAPER", "TARGETS", "OperatingPoint", "SubjectInputs",
           "bootstrap_intervals", "breakdown_markdown", "calibrate_operating_point",
           "evaluate_engine", "evaluate_subjects", "froc_markdown", "labels_at_least",
           "outline_candidates", "outline_markdown", "percent_cell", "reliability_markdown",
           "report_markdown", "size_markdown", "subject_inputs"]
