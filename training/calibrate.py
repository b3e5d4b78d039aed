"""``lacuna-train calibrate``: choose a package's operating point (lesion threshold, outline
threshold and smallest lesion kept) on validation subjects and write it as a new package
version (same network files, new manifest and model card).

An operating point is part of what a model version means: changing it changes the lesions the
node reports, so it gets its own version, registered, verified and activated like any other.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from models.inference import TwoStageEngine
from models.package import (
    CARD_NAME,
    MANIFEST_NAME,
    ModelManifest,
    derived_package_problem,
    measured_metrics,
    verify_package,
)
from training.evaluate import OperatingPoint, calibrate_operating_point, mirroring_description

SWEEP_COLUMNS = (
    ("dice", "Dice"),
    ("detection_precision_iou06", "detection precision (IoU > 0.6)"),
    ("detection_recall_iou06", "detection recall (IoU > 0.6)"),
    ("detection_f1_iou06", "detection F1 (IoU > 0.6)"),
    ("detection_recall_any", "detection recall (any overlap)"),
    ("classification_precision", "classification precision"),
)


def calibration_problem(source: ModelManifest, out_dir: Path, version: str) -> str | None:
    """Why ``source`` cannot be written to ``out_dir`` as ``version``, or None if it can:
    checked before anything is loaded or swept."""
    return derived_package_problem(source, out_dir, version)


def fit_temperature(classifications: list[tuple[float, int]]) -> float:
    """The temperature (0.05-20, on a log grid) that minimises the negative log-likelihood of
    the true classes (1 FCI, 2 LACI) given P(LACI) ``classifications`` with their logits
    divided by it (Guo et al., 2017); 1 when there are none. Probabilities are clipped to
    [5e-5, 1 - 5e-5]: the engine keeps four decimals."""
    if not classifications:
        return 1.0
    p = np.clip(np.array([c[0] for c in classifications], np.float64), 5e-5, 1 - 5e-5)
    y = np.array([c[1] == 2 for c in classifications], np.float64)
    logits = np.log(p / (1 - p))
    temperatures = np.exp(np.linspace(np.log(0.05), np.log(20.0), 400))
    scaled = logits[None, :] / temperatures[:, None]
    # -log sigmoid(z) = log(1 + exp(-z)), stably.
    nll = (y * np.logaddexp(0, -scaled) + (1 - y) * np.logaddexp(0, scaled)).sum(axis=1)
    return round(float(temperatures[int(np.argmin(nll))]), 4)


def expected_calibration_error(classifications: list[tuple[float, int]], temperature: float,
                               bins: int = 5) -> float | None:
    """Expected calibration error (percent points) of the class certainty at ``temperature``
    over equal-width certainty bins on [0.5, 1]."""
    from models.inference import temperature_scaled

    if not classifications:
        return None
    rows = []
    for p_raw, true_class in classifications:
        p = temperature_scaled(p_raw, temperature)
        rows.append((max(p, 1 - p), (p >= 0.5) == (true_class == 2)))
    certainty = np.array([r[0] for r in rows])
    correct = np.array([r[1] for r in rows], np.float64)
    index = np.minimum(((certainty - 0.5) / 0.5 * bins).astype(int), bins - 1)
    gap = sum(abs(correct[index == b].mean() - certainty[index == b].mean()) * (index == b).sum()
              for b in range(bins) if (index == b).any())
    return round(100 * float(gap) / len(rows), 2)


def calibrated_package(
    engine: TwoStageEngine, package: Path, out_dir: Path, version: str, seeds: list[int],
    generator: str = "standard", progress: Callable[[int, int], None] | None = None,
    mirror_axes: tuple[str, ...] | None = None,
) -> ModelManifest:
    """Sweep the operating point of ``engine`` (loaded from ``package``) on ``seeds``, then
    write ``out_dir``: the package's files, a manifest with the chosen lesion threshold, outline
    threshold and minimum lesion size, ``version``, ``mirror_axes`` (test-time mirroring,
    swept with it; None: the package's own), the sweep (``training["calibration"]``) and as its
    ``metrics`` the chosen point's on ``seeds`` (the source's own, measured at its operating
    point, are kept as ``from_metrics``), and the card with a calibration section."""
    source = verify_package(package)
    problem = calibration_problem(source, out_dir, version)
    if problem is not None:
        raise ValueError(problem)
    original = engine.settings
    mirror = original.mirror_axes if mirror_axes is None else mirror_axes
    classifications: list[tuple[float, int]] = []
    try:  # swept with the new version's mirroring; the caller's engine is left as it was
        engine.settings = replace(original, mirror_axes=mirror)
        chosen, swept = calibrate_operating_point(engine, seeds, generator=generator,
                                                  progress=progress,
                                                  classifications=classifications)
    finally:
        engine.settings = original
    temperature = fit_temperature(classifications)
    calibration = {
        "from_version": source.version,
        "from_operating_point": OperatingPoint.of(source).key,
        "from_metrics": source.metrics,
        "seeds": [seeds[0], seeds[-1]],
        "generator": generator,
        "rule": "highest detection F1 at IoU > 0.6, then Dice",
        "from_mirror_axes": list(source.mirror_axes),
        "mirror_axes": list(mirror),
        # Temperature scaling of the secondary network on the same validation lesions.
        "laci_temperature": temperature,
        "classified_lesions": len(classifications),
        "expected_calibration_error_before": expected_calibration_error(classifications, 1.0),
        "expected_calibration_error_after": expected_calibration_error(classifications,
                                                                        temperature),
        "lesion_threshold": chosen.lesion_threshold,
        "outline_threshold": chosen.outline_threshold,
        "min_lesion_voxels": chosen.min_lesion_voxels,
        # "threshold[>outline threshold]/min voxels" -> metrics
        "swept": {point.key: {k: m[k] for k, _ in SWEEP_COLUMNS} for point, m in swept},
    }
    # The package's metrics describe its own operating point: the chosen one's, on validation.
    chosen_metrics = dict(swept)[chosen]
    manifest = replace(source, version=version, lesion_threshold=chosen.lesion_threshold,
                       outline_threshold=chosen.outline_threshold,
                       min_lesion_voxels=chosen.min_lesion_voxels, laci_temperature=temperature,
                       mirror_axes=mirror,
                       metrics=measured_metrics(chosen_metrics),
                       training={**source.training, "calibration": calibration})
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in source.files:
        shutil.copy2(package / name, out_dir / name)
    (out_dir / MANIFEST_NAME).write_text(manifest.to_json())
    card = (package / CARD_NAME).read_text() if (package / CARD_NAME).is_file() else \
        f"# Model card: {source.name}\n"
    card = card.replace(f"{source.name} {source.version}", f"{source.name} {version}", 1)
    (out_dir / CARD_NAME).write_text(card.rstrip() + "\n\n" + calibration_markdown(manifest, swept))
    verify_package(out_dir)
    return manifest


def calibration_markdown(manifest: ModelManifest,
                         swept: list[tuple[OperatingPoint, dict[str, float | None]]]) -> str:
    calibration = manifest.training["calibration"]
    first, last = calibration["seeds"]
    chosen = OperatingPoint.of(manifest)
    lines = ["| lesion threshold | outline threshold | min. voxels | "
             + " | ".join(name for _, name in SWEEP_COLUMNS) + " |",
             "|" + " --- |" * (len(SWEEP_COLUMNS) + 3)]
    for point, metrics in swept:
        mark = " (chosen)" if point == chosen else ""
        outline = "-" if point.outline_threshold is None else f"{point.outline_threshold:.2f}"
        lines.append(f"| {point.lesion_threshold:.2f}{mark} | {outline} | "
                     f"{point.min_lesion_voxels} | " + " | ".join(
            "-" if metrics[key] is None else f"{metrics[key]:.2f}" for key, _ in SWEEP_COLUMNS) + " |")
    return (
        "## Calibration\n"
        f"Version {manifest.version} is {manifest.name} {calibration['from_version']}'s networks"
        f"{mirroring_description(manifest.mirror_axes)} at {chosen.description}, chosen by "
        f"`lacuna-train calibrate` on {last - first + 1} validation subjects (seeds {first}-{last}, "
        f"the {calibration.get('generator', 'standard')} generator), never the subjects "
        "`lacuna-train evaluate` judges it on (900000.., and the independent generator's 700000..): "
        f"{calibration['rule']}. Percent. The manifest's metrics are the chosen row's "
        "(the source's are kept as `training.calibration.from_metrics`). An outline threshold "
        "of - is the plain threshold.\n\n"
        + "\n".join(lines) + "\n\n"
        + "The classifier's certainty is temperature-scaled: P(LACI)'s logit is divided by "
        f"{manifest.laci_temperature:g}, fitted on the {calibration.get('classified_lesions', 0)} "
        "validation lesions found at the chosen point (verdicts unchanged). Expected "
        f"calibration error there: {calibration.get('expected_calibration_error_before')} "
        f"points before, {calibration.get('expected_calibration_error_after')} after.\n"
    )
