"""Evaluation of a two-stage engine on synthetic subjects it has never seen (`lacuna evaluate`),
with the metrics of :mod:`training.metrics`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from models.inference import TwoStageEngine
from training.metrics import SubjectCounts, bootstrap_intervals, count_subject, summarise
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


def evaluate_subjects(
    engine: TwoStageEngine, seeds: list[int],
    progress: Callable[[int, int], None] | None = None,
    varied: bool = False,
) -> list[SubjectCounts]:
    """Render each seed's subject (T2 and T1 FLAIR, 256x256x24), segment and classify it, and
    count it against its ground truth. ``varied``: subjects from the richer generator, each
    with its own scanner geometry for T2 and T1 FLAIR, written as DICOM and read back through
    the node's own slice pairing (:func:`node.services.volumes.load_study_volumes`)."""
    if varied:
        return _evaluate_varied(engine, seeds, progress)
    counts = []
    for done, seed in enumerate(seeds, start=1):
        geometry = axial_geometry()
        phantom = make_phantom(seed, geometry)
        t2 = render_series(phantom, geometry, Contrast.T2_FLAIR)
        t1 = render_series(phantom, geometry, Contrast.T1_FLAIR, seed_offset=1)
        result = engine.segment(
            t2.pixels.astype(np.float32), t1.pixels.astype(np.float32),
            np.ones(geometry.slices, dtype=bool), geometry.pixel_spacing, geometry.slice_spacing,
        )
        counts.append(count_subject(t2.labels, result.labels))
        if progress is not None:
            progress(done, len(seeds))
    return counts


def _evaluate_varied(
    engine: TwoStageEngine, seeds: list[int], progress: Callable[[int, int], None] | None,
) -> list[SubjectCounts]:
    from training.dataset import varied_study

    counts = []
    for done, seed in enumerate(seeds, start=1):
        volumes, truth = varied_study(seed)
        result = engine.segment(volumes.t2, volumes.t1, volumes.t1_available,
                                volumes.pixel_spacing, volumes.slice_spacing)
        counts.append(count_subject(truth, result.labels))
        if progress is not None:
            progress(done, len(seeds))
    return counts


def evaluate_engine(engine: TwoStageEngine, seeds: list[int],
                    varied: bool = False) -> dict[str, float | None]:
    """Every metric of :func:`training.metrics.summarise` over ``seeds``."""
    return summarise(evaluate_subjects(engine, seeds, varied=varied))


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

    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

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
        lines.append(f"| {name} | {cell(metrics[key])} | "
                     f"{'n/a' if low_high is None else f'{low_high[0]:.2f}-{low_high[1]:.2f}'} | "
                     f"{cell(PAPER.get(key))} | {cell(target)} | {met} |")
    return "\n".join(lines) + "\n"


__all__ = ["PAPER", "TARGETS", "bootstrap_intervals", "evaluate_engine", "evaluate_subjects",
           "report_markdown"]
