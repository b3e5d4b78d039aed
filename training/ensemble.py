"""``lacuna-train ensemble``: several packages' networks averaged into one package.

The ensemble's lesion probabilities are the mean of its members' primary networks, its P(LACI)
the mean of their secondary networks: nnU-Net's way with the networks of cross-validation folds
(`lacuna-train crossval` keeps each fold's as a package). Members differ by noise of training (which
subjects, which crops, which initial weights); averaging cancels part of it, for the cost of
running every member. Its operating point is the first member's until `lacuna-train calibrate`
chooses one for the ensemble.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from models.package import (
    CARD_NAME,
    MANIFEST_NAME,
    PRIMARY_FILE,
    SECONDARY_FILE,
    ModelManifest,
    output_folder_problem,
    sha256_file,
    verify_package,
)
from training.evaluate import OperatingPoint, mirroring_description

RULE = "mean of the members' primary network outputs and of their secondary network outputs"


def ensemble_problem(members: Sequence[ModelManifest], out_dir: Path, version: str) -> str | None:
    """Why ``members`` cannot be averaged into ``out_dir`` as ``version``, or None if they can:
    checked before any network is loaded."""
    if len(members) < 2:
        return f"an ensemble needs at least 2 member packages, got {len(members)}"
    matrices = {member.input_matrix for member in members}
    if len(matrices) > 1:
        return f"members take different input matrices: {sorted(matrices)}"
    grids = {member.grid_spacing_mm for member in members}
    if len(grids) > 1:
        return f"members run on different grids (mm): {sorted(grids, key=str)}"
    primaries = [member.files[PRIMARY_FILE] for member in members]
    if len(set(primaries)) < len(primaries):
        return "a member package is given twice (the same primary network)"
    if version in {member.version for member in members}:
        return f"the ensemble needs a version of its own, not a member's ({version})"
    return output_folder_problem(out_dir)


def ensemble_package(members: Sequence[Path], out_dir: Path, version: str) -> ModelManifest:
    """Verify every member package, then write ``out_dir``: one primary and one secondary
    network that average the members' (:func:`models.networks.average_networks`), a manifest
    naming each member by version and sha256, and a model card."""
    import keras

    from models.networks import average_networks

    manifests = [verify_package(member) for member in members]
    problem = ensemble_problem(manifests, out_dir, version)
    if problem is not None:
        raise ValueError(problem)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, ensemble_name in ((PRIMARY_FILE, "primary_ensemble"),
                                (SECONDARY_FILE, "secondary_ensemble")):
        networks = [keras.saving.load_model(member / name, compile=False) for member in members]
        average_networks(networks, ensemble_name).save(out_dir / name)
    # The first member's name, input matrix, grid, thresholds, temperature, test-time mirroring
    # and intended use; everything else new.
    manifest = replace(
        manifests[0],
        version=version,
        files={name: sha256_file(out_dir / name) for name in (PRIMARY_FILE, SECONDARY_FILE)},
        trained_on=f"{len(manifests)} networks' mean: "
                   + "; ".join(f"{m.version}: {m.trained_on}" for m in manifests),
        metrics={},
        training={"ensemble": {
            "rule": RULE,
            "members": [{"name": m.name, "version": m.version, "files": m.files,
                         "metrics": m.metrics, "training": m.training} for m in manifests],
        }},
    )
    (out_dir / MANIFEST_NAME).write_text(manifest.to_json())
    (out_dir / CARD_NAME).write_text(ensemble_card(manifest, manifests))
    verify_package(out_dir)
    return manifest


def ensemble_card(manifest: ModelManifest, members: Sequence[ModelManifest]) -> str:
    rows = "\n".join(
        f"| {m.version} | {m.trained_on} | "
        + " | ".join(f"{m.metrics[key]:.2f}" if key in m.metrics else "-"
                     for key in ("dice", "detection_precision_iou06", "detection_recall_iou06"))
        + " |" for m in members)
    return f"""# Model card: {manifest.name} {manifest.version}

**Not for clinical use.** {manifest.intended_use}

## What it is
The mean of {len(members)} packages' networks (`lacuna-train ensemble`): each T2 FLAIR slice goes
through every member's U-Net and the lesion probabilities are averaged; each lesion's T1 FLAIR
ROI through every member's classifier, and P(LACI) is averaged. It runs every member: the
primary network's time is {len(members)} times one member's.

## Members
Each member's own validation figures (its manifest's, at its own operating point), percent:

| version | trained on | Dice | detection precision (IoU > 0.6) | detection recall (IoU > 0.6) |
| --- | --- | --- | --- | --- |
{rows}

## Operating point
{OperatingPoint.of(manifest).description.capitalize()}{mirroring_description(manifest.mirror_axes)}: the first
member's, not chosen for the ensemble.
`lacuna-train calibrate` chooses one on validation subjects; `lacuna-train evaluate` measures it on
held-out ones.
"""
