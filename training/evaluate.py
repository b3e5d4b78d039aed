"""Lesion-level evaluation of a two-stage engine on synthetic subjects."""

from __future__ import annotations

import numpy as np
from skimage.measure import label

from models.inference import LABEL_VALUES, LesionClass, TwoStageEngine
from training.phantom import Contrast, axial_geometry, make_phantom, render_series


def evaluate_engine(engine: TwoStageEngine, seeds: list[int]) -> dict[str, float]:
    """Dice of the lesion area, detection precision/recall at any overlap, and the share of
    matched lesions whose class is right. Percentages, rounded to 0.01."""
    intersection = predicted_total = true_total = 0
    true_lesions = detected_true = predicted_lesions = true_positive_predictions = 0
    matched = correct = 0
    for seed in seeds:
        geometry = axial_geometry()
        phantom = make_phantom(seed, geometry)
        t2 = render_series(phantom, geometry, Contrast.T2_FLAIR)
        t1 = render_series(phantom, geometry, Contrast.T1_FLAIR, seed_offset=1)
        result = engine.segment(
            t2.pixels.astype(np.float32), t1.pixels.astype(np.float32),
            np.ones(geometry.slices, dtype=bool), geometry.pixel_spacing, geometry.slice_spacing,
        )
        truth = t2.labels
        predicted = result.labels > 0
        intersection += int(np.sum(predicted & (truth > 0)))
        predicted_total += int(predicted.sum())
        true_total += int((truth > 0).sum())
        true_components = label(truth > 0, connectivity=2)
        for number in range(1, int(true_components.max()) + 1):
            component = true_components == number
            true_lesions += 1
            overlapping = np.unique(result.lesion_numbers[component])
            overlapping = overlapping[overlapping > 0]
            if len(overlapping):
                detected_true += 1
                true_class = int(np.bincount(truth[component]).argmax())
                lesion = result.lesions[int(overlapping[0]) - 1]
                matched += 1
                expected = LesionClass.FCI if true_class == 1 else LesionClass.LACI
                correct += int(LABEL_VALUES[lesion.lesion_class] == LABEL_VALUES[expected])
        for lesion in result.lesions:
            predicted_lesions += 1
            true_positive_predictions += int(np.any(truth[result.lesion_numbers == lesion.number]))

    def percent(numerator: int, denominator: int) -> float:
        return round(100.0 * numerator / denominator, 2) if denominator else 0.0

    return {
        "subjects": float(len(seeds)),
        "dice": percent(2 * intersection, predicted_total + true_total),
        "detection_precision_any_overlap": percent(true_positive_predictions, predicted_lesions),
        "detection_recall_any_overlap": percent(detected_true, true_lesions),
        "classification_accuracy": percent(correct, matched),
    }
