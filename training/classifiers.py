"""``lacuna-train classifiers``: a package's secondary network retrained as the mean of several
classifiers (a deep ensemble, Lakshminarayanan et al. 2017), its primary network kept.

One small classifier's verdicts and certainty depend on its training seed more than on any
recipe change measured here (docs/recipes.md, 0.11.1: nine seeds of one recipe were 87.8-93.9 %
right on the same validation lesions). The mean of several is steadier and its certainty
better calibrated. The classifier is small, so running several costs little; the U-Net, which
does cost, is copied unchanged, so the lesions found and their outlines stay the source
package's. The new package's temperature is 1 until `lacuna-train calibrate` fits one on
validation subjects.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

from models.package import (
    PRIMARY_FILE,
    SECONDARY_FILE,
    ModelManifest,
    derived_package_problem,
    verify_package,
    write_derived_package,
)
from training.dataset import secondary_rois
from training.train import (
    fit_secondary_network,
    make_training_subjects,
    package_plan,
    training_seeds,
)

logger = logging.getLogger(__name__)

RULE = ("mean of the members' P(LACI); each member the source recipe's classifier trained on "
        "the source's training subjects with its own seed (initial weights, ROI jitter and "
        "flips, batch order)")


def classifiers_problem(source: ModelManifest, out_dir: Path, version: str,
                        members: int) -> str | None:
    """Why ``source``'s classifier cannot be retrained as ``members`` classifiers into
    ``out_dir`` as ``version``, or None if it can: checked before anything is rendered."""
    if members < 2:
        return f"an ensemble needs at least 2 classifiers, got {members}"
    plan = package_plan(source)
    if plan.secondary_from_primary:
        return ("the source's classifier learnt from its primary network's lesions; "
                "`lacuna-train classifiers` trains on true lesions only")
    return derived_package_problem(source, out_dir, version)


def classifier_ensemble_package(package: Path, out_dir: Path, version: str,
                                members: int = 5) -> ModelManifest:
    """Verify ``package``, render its recipe's training subjects (as
    :func:`training.train.train_package` draws them, plus its labelled studies), train
    ``members`` classifiers on them with seeds 1..``members``, and write ``out_dir``: the
    source's primary network byte for byte, the members' mean as the secondary network, a
    manifest (temperature 1, no metrics until calibrated) and a card."""
    import keras

    from models.networks import average_networks

    source = verify_package(package)
    problem = classifiers_problem(source, out_dir, version, members)
    if problem is not None:
        raise ValueError(problem)
    plan = package_plan(source)
    started = time.monotonic()
    subjects, _ = make_training_subjects(plan, training_seeds(plan))
    logger.info("made %d training subjects in %.0f s", len(subjects), time.monotonic() - started)
    networks = []
    rows = []
    for seed in range(1, members + 1):
        keras.utils.set_random_seed(seed)
        rois, targets = secondary_rois(subjects, np.random.default_rng(seed))
        network, accuracy = fit_secondary_network(plan, rois, targets, seed)
        networks.append(network)
        rows.append({"seed": seed, "rois": len(rois), "training_accuracy": round(accuracy, 4)})
        logger.info("classifier %d of %d: %d ROIs, accuracy %.3f (%.0f s)", seed, members,
                    len(rois), accuracy, time.monotonic() - started)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(package / PRIMARY_FILE, out_dir / PRIMARY_FILE)
    average_networks(networks, "secondary_ensemble").save(out_dir / SECONDARY_FILE)
    return write_derived_package(
        source, out_dir, version,
        training={
            "secondary": f"mean of {members} CNNs on 32x32 T1 FLAIR ROIs at ground-truth "
                         "lesions, 64x64, gamma 1.5",
            "classifiers": {"from_version": source.version, "from_files": source.files,
                            "rule": RULE, "members": rows,
                            "seconds": round(time.monotonic() - started)},
        },
        card=lambda manifest: classifiers_card(manifest, source), laci_temperature=1.0)


def classifiers_card(manifest: ModelManifest, source: ModelManifest) -> str:
    members = manifest.training["classifiers"]["members"]
    rows = "\n".join(f"| {m['seed']} | {m['rois']} | {100 * m['training_accuracy']:.2f} |"
                     for m in members)
    return f"""# Model card: {manifest.name} {manifest.version}

**Not for clinical use.** {manifest.intended_use}

## What it is
{source.name} {source.version}'s primary network, unchanged (the same lesions, the same
outlines), with its classifier replaced by the mean of {len(members)} classifiers trained anew
(`lacuna-train classifiers`): {RULE}. Trained on: {manifest.trained_on}.

## Members
| seed | training ROIs | training accuracy (last epoch, %) |
| --- | --- | --- |
{rows}

## Operating point
{source.version}'s lesion thresholds; the classifier's temperature is 1 until `lacuna-train
calibrate` fits one on validation subjects. `lacuna-train evaluate` measures it on held-out ones.
"""
