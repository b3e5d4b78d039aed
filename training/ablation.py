"""``lacuna-train ablation``: the paper's Table 1, measured here. Each row trains its variant on the
same subjects with the same seed and is evaluated on the same held-out subjects; the result is
a markdown table beside the paper's figures and a bar chart (PNG).

Rows (Liu et al. 2021, Table 1): the primary network alone on task a (segment by class:
background, FCI, LACI) and task b (segment lesion area), each plain, with augmentation, with
oversampling and with both; then the two-stage network (task b) plain, with augmentation, with
oversampling, and with both: the proposed method.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from skimage.measure import label, regionprops

from models.inference import InferenceSettings, TwoStageEngine, primary_context_slices
from models.preprocessing import from_model_grid, primary_input
from node.domain.lesions import LABEL_VALUES, LesionClass, LesionSegmentation
from training.evaluate import evaluate_subjects, percent_cell
from training.metrics import summarise
from training.train import (
    TrainingPlan,
    make_training_subjects,
    plan_generator,
    train_networks,
    trained_settings,
    training_seeds,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    method: str
    task: str
    augment: bool
    oversample: bool
    two_stage: bool
    # The paper's segmentation (Dice), detection and classification figures for this row.
    paper: tuple[float, float, float | None]


ROWS = (
    Variant("Primary network", "a", False, False, False, (10.23, 9.25, None)),
    Variant("Primary network", "b", False, False, False, (32.92, 16.12, None)),
    Variant("Primary network + Aug", "a", True, False, False, (15.83, 12.96, None)),
    Variant("Primary network + Aug", "b", True, False, False, (29.56, 15.80, None)),
    Variant("Primary network + Oversample", "a", False, True, False, (34.66, 24.07, None)),
    Variant("Primary network + Oversample", "b", False, True, False, (54.39, 58.06, None)),
    Variant("Primary network + Aug + Oversample", "a", True, True, False, (32.48, 52.18, None)),
    Variant("Primary network + Aug + Oversample", "b", True, True, False, (67.50, 80.64, None)),
    Variant("Two-stage network", "b", False, False, True, (26.53, 28.23, 66.97)),
    Variant("Two-stage network + Aug", "b", True, False, True, (30.17, 58.40, 75.21)),
    Variant("Two-stage network + Oversample", "b", False, True, True, (67.82, 76.47, 87.45)),
    Variant("Proposed method", "b", True, True, True, (74.21, 91.76, 92.89)),
)


class PrimaryOnlyEngine:
    """The primary network alone, as the paper's single-stage rows use it: task b marks lesion
    area without a class; task a gives each connected lesion the class its pixels vote for."""

    def __init__(self, primary: Any, task: str, settings: InferenceSettings) -> None:
        self._primary, self._task, self.settings = primary, task, settings

    def segment(self, t2: np.ndarray, t1: np.ndarray | None, t1_available: np.ndarray | None,
                pixel_spacing_mm: tuple[float, float], slice_spacing_mm: float) -> LesionSegmentation:
        batch = primary_input(t2, self.settings.input_matrix, primary_context_slices(self._primary))
        output = np.asarray(self._primary(batch, training=False))
        probability = np.stack([np.clip(from_model_grid(output[..., c], t2.shape[1:]), 0, 1)
                                for c in range(output.shape[-1])], axis=-1)
        lesion = 1.0 - probability[..., 0] >= self.settings.lesion_threshold
        labels = np.zeros(t2.shape, np.uint8)
        numbers = label(lesion, connectivity=2)
        for region in regionprops(numbers):
            if region.area < self.settings.min_lesion_voxels:
                continue
            coords = tuple(region.coords.T)
            if self._task == "b":
                value = LABEL_VALUES[LesionClass.UNCLASSIFIED]
            else:
                votes = probability[coords][:, 1:].sum(axis=0)
                value = LABEL_VALUES[LesionClass.LACI if votes[1] > votes[0] else LesionClass.FCI]
            labels[coords] = value
        return LesionSegmentation(labels=labels, lesion_numbers=numbers.astype(np.uint16), lesions=())


def run_ablation(base: TrainingPlan, out_dir: Path, rows: tuple[Variant, ...] = ROWS,
                 validation_first_seed: int = 800_000) -> list[tuple[Variant, dict[str, float | None]]]:
    """Train and evaluate every row; write ``ablation.md`` and ``ablation.png`` in ``out_dir``.
    Every row runs on the 256x256 model matrix (task a's primary-only engine resizes slices),
    whatever grid ``base`` names."""
    base = replace(base, grid_spacing_mm=None)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    seeds = training_seeds(base)
    subjects, _ = make_training_subjects(base, seeds)
    validation = list(range(validation_first_seed, validation_first_seed + base.validation_subjects))
    settings = trained_settings(base)
    results = []
    for index, row in enumerate(rows, start=1):
        import keras

        plan = replace(base, task=row.task, augment=row.augment, oversample=row.oversample,
                       two_stage=row.two_stage)
        keras.utils.set_random_seed(plan.seed)  # every row starts from the same weights and draws
        primary, secondary = train_networks(plan, subjects, np.random.default_rng(plan.seed),
                                            out_dir / f"row-{index:02d}", started)
        engine: Any = (TwoStageEngine(primary, secondary, settings) if secondary is not None
                       else PrimaryOnlyEngine(primary, row.task, settings))
        metrics = summarise(evaluate_subjects(engine, validation, generator=plan_generator(base)))
        logger.info("ablation %d/%d %s (task %s): %s", index, len(rows), row.method, row.task, metrics)
        results.append((row, metrics))
    (out_dir / "ablation.md").write_text(ablation_markdown(results, base, validation))
    ablation_chart(results).save(out_dir / "ablation.png")
    return results


def ablation_markdown(results: list[tuple[Variant, dict[str, float | None]]], plan: TrainingPlan,
                      validation: list[int]) -> str:
    lines = [
        "| method | task | Dice | detection precision (IoU > 0.6) | detection recall (IoU > 0.6) "
        "| classification precision | LACI recall | paper: Dice / detection / classification |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row, m in results:
        paper = " / ".join(percent_cell(v) for v in row.paper)
        classifies = row.two_stage or row.task == "a"  # else every lesion is unclassified
        precision = percent_cell(m["classification_precision"]) if classifies else "-"
        laci_recall = percent_cell(m["classification_recall_LACI"]) if classifies else "-"
        lines.append(f"| {row.method} | {row.task} | {percent_cell(m['dice'])} | "
                     f"{percent_cell(m['detection_precision_iou06'])} | "
                     f"{percent_cell(m['detection_recall_iou06'])} | "
                     f"{precision} | {laci_recall} | {paper} |")
    return (
        f"Each row: {plan.subjects} {'varied ' if plan.varied else ''}synthetic training subjects "
        f"(seed {plan.seed}), {plan.primary_epochs} primary epochs of {plan.primary_crops_per_epoch} "
        f"crops, {plan.secondary_epochs} secondary epochs; evaluated on {len(validation)} held-out "
        f"subjects (seeds {validation[0]}-{validation[-1]}). Percent. Task a: the primary network "
        "segments by class; task b: by lesion area. A task-b primary network alone gives no class.\n\n"
        + "\n".join(lines) + "\n"
    )


def ablation_chart(results: list[tuple[Variant, dict[str, float | None]]]) -> Image.Image:
    """Horizontal bars per row: Dice, detection precision (IoU > 0.6), classification precision."""
    metrics = (("dice", "Dice", (70, 130, 220)),
               ("detection_precision_iou06", "detection precision", (240, 160, 40)),
               ("classification_precision", "classification precision", (200, 60, 60)))
    row_height, bar, left, width = 42, 12, 300, 400
    image = Image.new("RGB", (left + width + 60, 40 + row_height * len(results)), "white")
    draw = ImageDraw.Draw(image)
    for n, (_, name, colour) in enumerate(metrics):
        draw.rectangle((left + 150 * n, 8, left + 150 * n + 10, 18), fill=colour)
        draw.text((left + 150 * n + 14, 7), name, fill="black")
    for i, (row, values) in enumerate(results):
        top = 34 + i * row_height
        draw.text((6, top + 12), f"{row.method} ({row.task})", fill="black")
        for n, (key, _, colour) in enumerate(metrics):
            value = values.get(key)
            y = top + n * bar
            if value is not None:
                draw.rectangle((left, y, left + width * value / 100, y + bar - 2), fill=colour)
                draw.text((left + width * value / 100 + 4, y - 1), f"{value:.0f}", fill="black")
    draw.line((left, 30, left, image.height), fill="black")
    return image
