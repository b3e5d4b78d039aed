"""``lacuna-train finetune``: a package's primary network trained further, its classifier kept.

The counterpart of ``lacuna-train classifiers``: the U-Net starts from the source package's
weights and trains a few more epochs on the source recipe's training subjects (or with another
loss or learning rate); the secondary network, which learns from true lesions and not from the
U-Net's output, is copied byte for byte. Cheaper than training anew, and the way to try a loss
on a trained network within a CPU budget. The new package keeps the source's operating point
and temperature until ``lacuna-train calibrate`` chooses them again on validation subjects.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
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
from models.preprocessing import widening_problem
from training.train import (
    LOSS_NAMES,
    LOSSES,
    fit_primary_network,
    make_training_subjects,
    package_plan,
    training_backend,
    training_seeds,
)

logger = logging.getLogger(__name__)


def finetune_problem(source: ModelManifest, out_dir: Path, version: str, epochs: int,
                     loss: str | None, learning_rate: float,
                     context_slices: int | None = None) -> str | None:
    """Why ``source``'s primary network cannot be fine-tuned as asked, or None if it can:
    checked before anything is rendered."""
    if epochs < 1:
        return f"fine-tuning needs at least 1 epoch, got {epochs}"
    if not learning_rate > 0:
        return f"the learning rate must be positive, got {learning_rate}"
    if loss is not None and loss not in LOSSES:
        return f"unknown loss {loss!r}; known: {', '.join(LOSSES)}"
    plan = package_plan(source)
    if context_slices is not None and (
            problem := widening_problem(plan.context_slices, context_slices)) is not None:
        return problem
    if plan.secondary_from_primary:
        return ("the source's classifier learnt from its primary network's lesions; a new "
                "primary network would need a new classifier")
    if "ensemble" in source.training:
        return "the source's primary network is an average of several; fine-tune one member"
    return derived_package_problem(source, out_dir, version)


def finetune_package(package: Path, out_dir: Path, version: str, *, epochs: int,
                     learning_rate: float, loss: str | None = None, seed: int = 1,
                     context_slices: int | None = None) -> ModelManifest:
    """Verify ``package``, render its recipe's training subjects (as
    :func:`training.train.train_package` draws them), train its primary network ``epochs``
    more epochs from its weights (``loss``: the source's when None; the learning rate falls
    along a cosine from ``learning_rate`` to 5 % of it when the source's recipe decays, else
    stays), and write ``out_dir``: the tuned primary, the source's secondary byte for byte, a
    manifest (the source's operating point, no metrics until calibrated) and a card.
    ``context_slices`` more than the source network takes widens its input first
    (:func:`models.networks.widen_primary_context`: it starts as the source network)."""
    import keras

    from models.inference import primary_context_slices
    from models.networks import widen_primary_context

    source = verify_package(package)
    problem = finetune_problem(source, out_dir, version, epochs, loss, learning_rate,
                               context_slices)
    if problem is not None:
        raise ValueError(problem)
    base = package_plan(source)
    plan = replace(base, version=version, primary_epochs=epochs, learning_rate=learning_rate,
                   loss=loss or base.loss, seed=seed,
                   context_slices=context_slices or base.context_slices)
    started = time.monotonic()
    # The source's subjects (its seed), whatever seed draws this run's crops.
    subjects, _ = make_training_subjects(base, training_seeds(base))
    logger.info("made %d training subjects in %.0f s", len(subjects), time.monotonic() - started)
    keras.utils.set_random_seed(seed)
    primary = keras.saving.load_model(package / PRIMARY_FILE, compile=False)
    if primary_context_slices(primary) != plan.context_slices:  # the file says, as the engine
        primary = widen_primary_context(primary, plan.context_slices)
    # Checkpoints and logs go under out_dir, as `lacuna-train train` writes them.
    fit_primary_network(plan, primary, subjects, np.random.default_rng(seed), out_dir, started)
    primary.save(out_dir / PRIMARY_FILE)
    shutil.copy2(package / SECONDARY_FILE, out_dir / SECONDARY_FILE)
    widened = ("" if plan.context_slices == base.context_slices else
               f", its input widened to {plan.context_slices} adjacent slices (the neighbours' "
               "weights starting at zero)")
    return write_derived_package(
        source, out_dir, version,
        training={
            # The recipe's fields stay the source's (what rendered the subjects and trained
            # the first epochs), but for the slices the network now takes, which a later
            # fine-tune must feed it; this run is its own record.
            "context_slices": plan.context_slices,
            "primary": (f"{source.version}'s U-Net ({source.training.get('primary', '')}) "
                        f"fine-tuned {epochs} epochs{widened}: " + LOSS_NAMES[plan.loss]
                        + f", RMSProp (learning rate {learning_rate}"
                        + (" with cosine decay to 5 %" if plan.cosine_decay else "")
                        + ", rho 0.9), lesion-oversampled crops"),
            "finetune": {"from_version": source.version, "from_files": source.files,
                         "epochs": epochs, "learning_rate": learning_rate, "loss": plan.loss,
                         "seed": seed, "context_slices": plan.context_slices,
                         "framework": training_backend(),
                         "seconds": round(time.monotonic() - started)},
            # The source's own fine-tunes, oldest first: "finetune" holds only this run's.
            "earlier_finetunes": earlier_finetunes(source),
        },
        card=lambda manifest: finetune_card(manifest, source))


def earlier_finetunes(source: ModelManifest) -> list[dict[str, object]]:
    """Every fine-tune ``source``'s primary network went through, oldest first."""
    earlier = list(source.training.get("earlier_finetunes", []))
    if "finetune" in source.training:
        earlier.append(source.training["finetune"])
    return earlier


def finetune_card(manifest: ModelManifest, source: ModelManifest) -> str:
    tuned = manifest.training["finetune"]
    return f"""# Model card: {manifest.name} {manifest.version}

**Not for clinical use.** {manifest.intended_use}

## What it is
{source.name} {source.version}'s primary network trained further (`lacuna-train finetune`):
{manifest.training['primary']}; crops drawn with seed {tuned['seed']}. Its classifier is
{source.version}'s, unchanged. Trained on: {manifest.trained_on}.

## Operating point
{source.version}'s lesion thresholds and temperature until `lacuna-train calibrate` chooses
them again on validation subjects. `lacuna-train evaluate` measures it on held-out ones.
"""
