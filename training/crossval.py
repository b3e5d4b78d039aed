"""``lacuna-train crossval``: k-fold cross-validation split by subject, never by slice.

Every subject is tested exactly once, by the fold whose model never saw any slice of it. Each
fold trains both networks from the same seed on the other folds' subjects; the report gives
each fold's figures, their mean and spread, and the metrics pooled over every held-out subject
with bootstrap intervals over subjects. Each fold's networks are kept as a package
(``fold-N/package``, version ``VERSION+foldN``): `lacuna-train ensemble` averages them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from models.inference import TwoStageEngine
from training.evaluate import evaluate_subjects, percent_cell, report_markdown, size_markdown
from training.metrics import SizeBin, SubjectCounts, bootstrap_intervals, recall_by_size, summarise
from training.train import (
    TrainingPlan,
    make_training_subjects,
    plan_generator,
    train_networks,
    trained_settings,
    training_data_description,
    training_seeds,
    write_package,
)

logger = logging.getLogger(__name__)

# The figures shown per fold, with their column names.
FOLD_COLUMNS = (
    ("dice", "Dice"),
    ("detection_precision_iou06", "detection precision (IoU > 0.6)"),
    ("detection_recall_iou06", "detection recall (IoU > 0.6)"),
    ("classification_precision", "classification precision"),
    ("classification_recall_LACI", "LACI recall"),
)


@dataclass(frozen=True)
class Fold:
    """One fold: the subjects (seeds) it trains on and the ones it is tested on."""

    number: int
    training: tuple[int, ...]
    test: tuple[int, ...]


def subject_folds(seeds: list[int], folds: int, seed: int) -> list[Fold]:
    """Split subjects into ``folds`` folds of near-equal size after a seeded shuffle. Pure:
    each subject is in exactly one fold's test set and in every other fold's training set."""
    if folds < 2:
        raise ValueError("cross-validation needs at least 2 folds")
    if len(seeds) < folds:
        raise ValueError(f"{len(seeds)} subjects cannot fill {folds} folds")
    if len(set(seeds)) != len(seeds):
        raise ValueError("subject seeds repeat")
    order = list(np.random.default_rng(seed).permutation(seeds))
    groups = [sorted(int(s) for s in order[n::folds]) for n in range(folds)]
    return [
        Fold(number=n + 1, test=tuple(group),
             training=tuple(sorted(s for other in groups if other is not group for s in other)))
        for n, group in enumerate(groups)
    ]


@dataclass(frozen=True)
class CrossValidation:
    folds: list[Fold]
    per_fold: list[dict[str, float | None]]
    pooled: dict[str, float | None]
    intervals: dict[str, tuple[float, float]]
    by_size: list[SizeBin] = field(default_factory=list)


def run_crossval(plan: TrainingPlan, out_dir: Path, folds: int = 5) -> CrossValidation:
    """Train and test every fold on ``plan.subjects`` synthetic subjects; write
    ``crossval.md`` in ``out_dir`` (each fold's checkpoints, logs and package go in
    ``fold-N``)."""
    import keras

    if plan.data_dir is not None:
        raise ValueError("cross-validation splits synthetic subjects; --data is not split")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    seeds = training_seeds(plan)
    split = subject_folds(seeds, folds, plan.seed)
    arrays, _ = make_training_subjects(plan, seeds)
    by_seed = dict(zip(seeds, arrays, strict=True))
    settings = trained_settings(plan)
    per_fold: list[dict[str, float | None]] = []
    pooled: list[SubjectCounts] = []
    for fold in split:
        keras.utils.set_random_seed(plan.seed)  # every fold starts from the same weights
        primary, secondary = train_networks(plan, [by_seed[s] for s in fold.training],
                                            np.random.default_rng(plan.seed),
                                            out_dir / f"fold-{fold.number}", started)
        assert secondary is not None, "cross-validation trains the two-stage network"
        counts = evaluate_subjects(TwoStageEngine(primary, secondary, settings), list(fold.test),
                                   generator=plan_generator(plan))
        per_fold.append(summarise(counts))
        pooled.extend(counts)
        # Each fold's networks as a package: members for `lacuna-train ensemble`, or to inspect.
        write_package(
            out_dir / f"fold-{fold.number}" / "package",
            replace(plan, version=f"{plan.version}+fold{fold.number}",
                    held_out_seeds=tuple(fold.test)), primary, secondary,
            trained_on=(f"{len(fold.training)} synthetic subjects (cross-validation fold "
                        f"{fold.number} of {folds}: seeds {seeds[0]}-{seeds[-1]} but its "
                        f"{len(fold.test)} test subjects) " + training_data_description(plan)),
            metrics=per_fold[-1], intervals=bootstrap_intervals(counts),
            seconds=round(time.monotonic() - started))
        logger.info("fold %d/%d: %s (%.0f s)", fold.number, folds, per_fold[-1],
                    time.monotonic() - started)
    result = CrossValidation(split, per_fold, summarise(pooled), bootstrap_intervals(pooled),
                             recall_by_size(pooled))
    (out_dir / "crossval.md").write_text(crossval_markdown(result, plan))
    return result


def crossval_markdown(result: CrossValidation, plan: TrainingPlan) -> str:
    folds = len(result.folds)
    header = "| fold | test subjects | " + " | ".join(name for _, name in FOLD_COLUMNS) + " |"
    lines = [header, "|" + " --- |" * (len(FOLD_COLUMNS) + 2)]
    for fold, metrics in zip(result.folds, result.per_fold, strict=True):
        lines.append(f"| {fold.number} | {len(fold.test)} | "
                     + " | ".join(percent_cell(metrics[key]) for key, _ in FOLD_COLUMNS) + " |")
    spread = []
    for key, _ in FOLD_COLUMNS:
        values = [v for m in result.per_fold if (v := m[key]) is not None]
        spread.append("-" if not values else
                      f"{np.mean(values):.2f} +- {np.std(values, ddof=1) if len(values) > 1 else 0.0:.2f}")
    lines.append(f"| mean +- sd | {sum(len(f.test) for f in result.folds)} | " + " | ".join(spread) + " |")
    pooled = report_markdown(result.pooled, result.intervals,
                             f"Pooled over every held-out subject ({folds} folds)")
    seeds = training_seeds(plan)
    return (
        f"# {folds}-fold cross-validation by subject\n\n"
        f"{plan.subjects} {'varied ' if plan.varied else ''}synthetic subjects (seeds "
        f"{seeds[0]}-{seeds[-1]}), split by subject with "
        f"seed {plan.seed}; each fold trains both networks on the other folds' subjects "
        f"({plan.primary_epochs} primary epochs of {plan.primary_crops_per_epoch} crops, "
        f"{plan.secondary_epochs} secondary epochs"
        + (f", {plan.pretrain_epochs} of them lesion-rich pre-training" if plan.pretrain_epochs else "")
        + f"; loss {plan.loss}, RMSProp at {plan.learning_rate}"
        + (", lesion-rich crops rotated 5-10 degrees" if plan.rotate_lesion_crops else "")
        + (", lesion-rich crops drawn per lesion" if plan.oversample_per_lesion else "")
        + ", secondary network on the "
        + ("primary network's lesions" if plan.secondary_from_primary else "true lesions")
        + ") and is tested on its own. Percent.\n\n"
        + "\n".join(lines) + "\n\n" + pooled
        + "\nDetection recall by true lesion volume, pooled:\n\n" + size_markdown(result.by_size)
    )
