"""``lacuna-train train``: train both networks on synthetic subjects on the CPU and write a model
package (``.keras`` files and ``manifest.json`` with sha256 and metrics)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from models.inference import InferenceSettings
from models.package import (
    CARD_NAME,
    PRIMARY_FILE,
    SECONDARY_FILE,
    SYNTHETIC_DATA_WARNING,
    ModelManifest,
    measured_metrics,
    sha256_file,
)
from models.preprocessing import slice_context
from training.dataset import (
    SubjectArrays,
    make_scanner_subject_arrays,
    make_subject_arrays,
    primary_crops,
    secondary_rois,
    secondary_rois_from_primary,
)
from training.evaluate import evaluate_subjects, report_markdown
from training.metrics import bootstrap_intervals, summarise
from training.parallel import map_on_cores

logger = logging.getLogger(__name__)

# How freshly trained networks are run for validation, the ablation and cross-validation, and
# what a new package's manifest says (with the plan's grid: trained_settings).
TRAINED_SETTINGS = InferenceSettings(input_matrix=(256, 256), lesion_threshold=0.5,
                                     laci_threshold=0.5, min_lesion_voxels=2)


@dataclass(frozen=True)
class TrainingPlan:
    """How much to train. The defaults (the bundled model's recipe) take about 20 minutes on a
    2-core CPU."""

    subjects: int = 80
    validation_subjects: int = 4
    seed: int = 1
    crop_size: int = 128
    primary_crops_per_epoch: int = 1600
    primary_epochs: int = 16
    secondary_epochs: int = 12
    base_filters: int = 16
    batch_size: int = 16
    learning_rate: float = 1e-3
    name: str = "lacuna-synthetic"
    version: str = "0.8.0"
    # Subjects of the realistic generator (issue 22: tiny lobulated lesions of drawn contrast,
    # look-alikes, wide noise, 3-7 mm slices) on varied scanners; ``varied`` wins when both
    # are set; neither: the first generator's single geometry.
    realistic: bool = True
    # The primary network runs on square pixels of this size (mm) in tiles, whatever the
    # scanner's matrix (a 512 matrix is not shrunk); None: every slice resized to 256x256.
    grid_spacing_mm: float | None = 0.5
    # Beyond the first recipe: subjects of the richer generator on their own scanners; the
    # paper's 5-10 degree rotation of lesion-rich crops; the secondary network trained on ROIs
    # where the trained primary network finds lesions (the paper's way) instead of true ones.
    varied: bool = False
    rotate_lesion_crops: bool = False
    secondary_from_primary: bool = False
    # A hospital's own labelled studies (MR series + DICOM SEG ground truth), trained on beside
    # the synthetic subjects (training.dicom_data).
    data_dir: Path | None = None
    progress: bool = False  # Keras progress bars on the terminal
    # The paper's ablation knobs (Table 1). task "b": the primary network segments lesion area
    # (background, lesion); "a": it segments by class (background, FCI, LACI). augment: flips,
    # intensity scaling (and rotation when rotate_lesion_crops). oversample: 70 % of crops
    # centred on lesions instead of crops anywhere. two_stage: a secondary network classifies.
    task: str = "b"
    augment: bool = True
    oversample: bool = True
    two_stage: bool = True
    # The paper's oversampling schedule: this many first epochs on lesion-rich crops only, then
    # the rest on crops drawn from all brain slices. 0: 70 % lesion-rich crops every epoch.
    pretrain_epochs: int = 0
    # "dice+ce": cross-entropy plus soft Dice on the lesion channel over each batch;
    # "crop-dice+ce": the Dice of each crop, averaged; "crop-tversky+ce": each crop's Tversky
    # index, misses weighted over false voxels; "ce": the paper's cross-entropy alone.
    loss: str = "crop-dice+ce"
    # Lesion-rich crops drawn per lesion rather than per lesion voxel (small lesions as often
    # as large ones).
    oversample_per_lesion: bool = True
    # The primary network's learning rate falls along a cosine from ``learning_rate`` to 5 % of
    # it over all its steps, instead of staying constant: finer boundaries in the last epochs.
    cosine_decay: bool = True
    # augment's intensity scaling of primary crops: 1 +- this (uniform).
    intensity_jitter: float = 0.1
    # T2 FLAIR slices the primary network sees at once (odd): 1 is the paper's single slice; 3
    # adds both neighbours, which show how far a lesion reaches through the slab (its partial
    # volume). Measured, not adopted: docs/recipes.md, "Three slices in".
    context_slices: int = 1
    # Realistic training subjects leave out lesions whose peak contrast-to-noise on T2 FLAIR
    # is under this (training.phantom.peak_cnr): no label marks what the image cannot show.
    # 0: every drawn lesion. Never applied to validation or test subjects.
    min_training_cnr: float = 0.0
    # The recipe's training subjects (seeds) its networks never saw: a cross-validation fold's
    # test subjects. Its package names them, so that a fine-tune or a classifier retrained from
    # it trains on the fold's subjects only. Empty: every training subject.
    held_out_seeds: tuple[int, ...] = ()


# Named recipes (``lacuna-train train --recipe``): this project's, which the shipped model was trained
# with, and the paper's as Liu et al. describe it (cross-entropy, RMSProp at 0.01, lesion-rich
# pre-training then all slices, 5-10 degree rotation of lesion-rich crops, secondary network on
# the primary network's lesions).
RECIPES: dict[str, dict[str, Any]] = {
    "lacuna": {},
    "paper": {"loss": "ce", "learning_rate": 0.01, "pretrain_epochs": 3, "cosine_decay": False,
              "rotate_lesion_crops": True, "secondary_from_primary": True},
}


def plan_generator(plan: TrainingPlan) -> str:
    """The generator (:data:`training.evaluate.GENERATORS`) of ``plan``'s subjects."""
    return "varied" if plan.varied else "realistic" if plan.realistic else "standard"


def trained_settings(plan: TrainingPlan) -> InferenceSettings:
    """How networks trained on ``plan`` are run: :data:`TRAINED_SETTINGS` on the plan's grid."""
    from dataclasses import replace

    return replace(TRAINED_SETTINGS, grid_spacing_mm=plan.grid_spacing_mm)


def subject_seeds(plan: TrainingPlan) -> list[int]:
    """The synthetic subjects of ``plan``: its training subjects, then its validation ones."""
    return [plan.seed * 10_000 + n for n in range(plan.subjects + plan.validation_subjects)]


def training_seeds(plan: TrainingPlan) -> list[int]:
    """The subjects ``plan``'s networks train on: its training subjects but its
    ``held_out_seeds``."""
    held_out = set(plan.held_out_seeds)
    return [seed for seed in subject_seeds(plan)[: plan.subjects] if seed not in held_out]


def package_plan(manifest: ModelManifest) -> TrainingPlan:
    """The plan a package was trained with, from its manifest's ``training`` (what
    :func:`write_package` wrote; a field it lacks keeps today's default)."""
    names = {f.name for f in fields(TrainingPlan)} - {"name", "version", "progress"}
    given = {k: v for k, v in manifest.training.items() if k in names}
    if given.get("data_dir") is not None:
        given["data_dir"] = Path(given["data_dir"])
    given["held_out_seeds"] = tuple(given.get("held_out_seeds", ()))  # a list in JSON
    return TrainingPlan(name=manifest.name, version=manifest.version, **given)


def recipe_plan(recipe: str, **overrides: Any) -> TrainingPlan:
    """A plan with ``recipe``'s settings, then ``overrides`` (which win)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    return TrainingPlan(**{**RECIPES[recipe], **overrides})


def _cross_entropy(y_true, y_pred):  # type: ignore[no-untyped-def]
    """The paper's loss: pixel-wise categorical cross-entropy."""
    import keras

    return keras.ops.mean(keras.losses.categorical_crossentropy(y_true, y_pred))


def _dice_cross_entropy(y_true, y_pred, per_crop: bool = False):  # type: ignore[no-untyped-def]
    """Cross-entropy (the paper's loss) plus soft Dice on the lesion channels, which keeps tiny
    lesions from drowning in background pixels. The Dice is over the whole batch, or with
    ``per_crop`` each crop's own (smoothed by one voxel) averaged: then three extra voxels
    around a one-voxel lesion cost as much as around a large one's whole outline."""
    import keras

    ops = keras.ops
    cross_entropy = ops.mean(keras.losses.categorical_crossentropy(y_true, y_pred))
    axes = (1, 2, 3) if per_crop else None
    intersection = ops.sum(y_true[..., 1:] * y_pred[..., 1:], axis=axes)  # every lesion channel
    denominator = ops.sum(y_true[..., 1:], axis=axes) + ops.sum(y_pred[..., 1:], axis=axes)
    dice = (2.0 * intersection + 1.0) / (denominator + 1.0)
    return cross_entropy + (1.0 - ops.mean(dice))


def _crop_dice_cross_entropy(y_true, y_pred):  # type: ignore[no-untyped-def]
    return _dice_cross_entropy(y_true, y_pred, per_crop=True)


# The Tversky index's weight of a missed lesion voxel; a false one weighs one minus it. 0.7 is
# Salehi et al.'s (2017) setting; 0.85 charges misses harder still.
TVERSKY_MISS_WEIGHTS = {"crop-tversky+ce": 0.7, "crop-tversky85+ce": 0.85}


def _crop_tversky_cross_entropy(y_true, y_pred, miss_weight: float):  # type: ignore[no-untyped-def]
    """Cross-entropy plus one minus each crop's soft Tversky index on the lesion channels
    (smoothed by one voxel), averaged: the per-crop Dice with misses weighted ``miss_weight``
    and false voxels ``1 - miss_weight`` instead of 0.5 each, so faint and tiny lesions are not
    traded for a clean background."""
    import keras

    ops = keras.ops
    cross_entropy = ops.mean(keras.losses.categorical_crossentropy(y_true, y_pred))
    truth, predicted = y_true[..., 1:], y_pred[..., 1:]
    true_positive = ops.sum(truth * predicted, axis=(1, 2, 3))
    false_positive = ops.sum((1.0 - truth) * predicted, axis=(1, 2, 3))
    false_negative = ops.sum(truth * (1.0 - predicted), axis=(1, 2, 3))
    tversky = (true_positive + 1.0) / (true_positive + (1.0 - miss_weight) * false_positive
                                       + miss_weight * false_negative + 1.0)
    return cross_entropy + (1.0 - ops.mean(tversky))


def _tversky_loss(name: str) -> Any:
    """The ``crop-tversky...`` loss ``name`` as a named function (Keras reports its name)."""
    def loss(y_true, y_pred):  # type: ignore[no-untyped-def]
        return _crop_tversky_cross_entropy(y_true, y_pred, TVERSKY_MISS_WEIGHTS[name])

    loss.__name__ = name.replace("-", "_").replace("+", "_")
    return loss


# The primary network's losses by TrainingPlan.loss, and how a model card names them.
LOSSES = {"ce": _cross_entropy, "dice+ce": _dice_cross_entropy,
          "crop-dice+ce": _crop_dice_cross_entropy,
          **{name: _tversky_loss(name) for name in TVERSKY_MISS_WEIGHTS}}
LOSS_NAMES = {"ce": "cross-entropy", "dice+ce": "cross-entropy + soft Dice over each batch",
              "crop-dice+ce": "cross-entropy + soft Dice of each crop",
              **{name: "cross-entropy + soft Tversky index of each crop "
                       f"(false positives x {round(1 - weight, 2)}, misses x {weight})"
                 for name, weight in TVERSKY_MISS_WEIGHTS.items()}}


def _fit_data(inputs: np.ndarray, targets: np.ndarray, batch_size: int, seed: int) -> dict[str, Any]:
    """``fit``'s data arguments over arrays in memory, shuffled by ``seed`` every epoch. On the
    TensorFlow backend a batched, prefetched ``tf.data`` pipeline; on another (JAX on a GPU
    machine without TensorFlow, see :func:`training_backend`) the arrays, which ``fit`` batches
    and shuffles from NumPy's global seed (``keras.utils.set_random_seed``) after a first
    permutation by ``seed``."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        pipeline = (tf.data.Dataset.from_tensor_slices((inputs, targets))
                    .shuffle(len(inputs), seed=seed, reshuffle_each_iteration=True)
                    .batch(batch_size).prefetch(tf.data.AUTOTUNE))
        return {"x": pipeline, "shuffle": False}  # the pipeline shuffles, seeded
    order = np.random.default_rng(seed).permutation(len(inputs))
    return {"x": inputs[order], "y": targets[order], "batch_size": batch_size, "shuffle": True}


def _log_callbacks(log_dir: Path) -> list[Any]:
    """Training logs under ``log_dir``: TensorBoard's on the TensorFlow backend (its writer is
    TensorFlow's), else one CSV row per epoch (``epochs.csv``)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        return [keras.callbacks.TensorBoard(log_dir=str(log_dir))]
    log_dir.mkdir(parents=True, exist_ok=True)
    return [keras.callbacks.CSVLogger(str(log_dir / "epochs.csv"), append=True)]


def training_backend() -> str:
    """Where the networks train, for the model card: the Keras version, its backend and the
    backend's accelerators, e.g. ``"Keras 3.15.1, jax backend on gpu"``. Any Keras 3 backend
    trains a package that the node's TensorFlow loads (``.keras`` files do not depend on the
    backend); ``KERAS_BACKEND=jax`` runs ``lacuna-train train`` on a GPU machine without
    TensorFlow."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        devices = sorted({device.platform for device in jax.devices()})
    elif backend == "tensorflow":
        import tensorflow as tf

        devices = sorted({device.device_type.lower()
                          for device in tf.config.list_logical_devices()})
    else:
        devices = []
    return f"Keras {keras.__version__}, {backend} backend" + (
        f" on {', '.join(devices)}" if devices else "")


def lesion_fraction(plan: TrainingPlan, epoch: int) -> float:
    """The share of lesion-rich crops in ``epoch`` (0-based) under the plan's oversampling."""
    if not plan.oversample:
        return 0.0
    if plan.pretrain_epochs:
        return 1.0 if epoch < plan.pretrain_epochs else 0.0
    return 0.7


def precise_batch_norm(model: Any, inputs: np.ndarray, batch_size: int) -> int:
    """Set every BatchNormalization layer's moving mean and variance to the average of its
    batch statistics over ``inputs`` (in batches of ``batch_size``), weights fixed: "precise
    BatchNorm" (Wu and Johnson, 2021). During training the moving averages (momentum 0.9)
    follow the last few batches and lag the weights; a trained secondary network that was
    right on every validation ROI in training mode called seven LACI lesions in ten FCI in
    inference mode. ``inputs`` must be drawn as in training: statistics of another
    distribution (whole slices for a network trained on lesion-rich crops) break the network.
    Returns the number of batches."""
    import keras

    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    batches = 0
    try:
        for start in range(0, len(inputs), batch_size):
            for layer in layers:  # a running mean: batch n weighs 1/(n+1)
                layer.momentum = batches / (batches + 1)
            model(inputs[start : start + batch_size], training=True)
            batches += 1
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return batches


def primary_learning_rate(plan: TrainingPlan) -> Any:
    """The primary network's learning rate: ``plan.learning_rate``, or with ``cosine_decay`` a
    Keras schedule over every step of every primary epoch."""
    if not plan.cosine_decay:
        return plan.learning_rate
    import keras

    steps = plan.primary_epochs * -(-plan.primary_crops_per_epoch // plan.batch_size)
    return keras.optimizers.schedules.CosineDecay(plan.learning_rate, decay_steps=max(steps, 1),
                                                  alpha=0.05)


def fit_primary_network(plan: TrainingPlan, primary: Any, subjects: list[SubjectArrays],
                        rng: np.random.Generator, out_dir: Path, started: float) -> None:
    """Train ``primary`` (new or already trained) in place for ``plan.primary_epochs`` epochs of
    fresh crops of ``subjects`` with the plan's loss and learning rate, then set its BatchNorm
    statistics on the last epoch's crops; a checkpoint per epoch and the training logs
    (:func:`_log_callbacks`) go under ``out_dir``."""
    import keras

    if plan.loss not in LOSSES:
        raise ValueError(f"unknown loss {plan.loss!r}; known: {', '.join(LOSSES)}")
    classes = int(primary.output_shape[-1])
    primary.compile(
        optimizer=keras.optimizers.RMSprop(primary_learning_rate(plan), rho=0.9),
        loss=LOSSES[plan.loss],
    )
    checkpoints = out_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    callbacks = _log_callbacks(out_dir / "logs" / "primary")
    for epoch in range(plan.primary_epochs):
        # Fresh crops each epoch (new oversampled positions, flips, rotations), seeded.
        images, masks = primary_crops(subjects, rng, plan.primary_crops_per_epoch, plan.crop_size,
                                      lesion_fraction=lesion_fraction(plan, epoch),
                                      rotate_lesion_crops=plan.rotate_lesion_crops,
                                      augment=plan.augment, by_class=plan.task == "a",
                                      per_lesion=plan.oversample_per_lesion,
                                      intensity_jitter=plan.intensity_jitter,
                                      context_slices=plan.context_slices)
        one_hot = np.eye(classes, dtype=np.float32)[masks[..., 0].astype(np.int64)]
        history = primary.fit(**_fit_data(images, one_hot, plan.batch_size, plan.seed + epoch),
                              initial_epoch=epoch, epochs=epoch + 1, callbacks=callbacks,
                              verbose=1 if plan.progress else 0)
        primary.save_weights(checkpoints / f"primary-epoch-{epoch + 1:03d}.weights.h5")
        logger.info(
            "primary epoch %d/%d loss %.4f (%.0f s)", epoch + 1, plan.primary_epochs,
            history.history["loss"][-1], time.monotonic() - started,
        )
    if plan.primary_epochs:  # the last epoch's crops: what the network was trained on
        precise_batch_norm(primary, images, plan.batch_size)


def train_networks(plan: TrainingPlan, subjects: list[SubjectArrays], rng: np.random.Generator,
                   out_dir: Path, started: float) -> tuple[Any, Any | None]:
    """Train the primary network (and, for a two-stage plan, the secondary one) on
    ``subjects``; checkpoints and training logs go under ``out_dir``."""
    from models.networks import build_primary_network

    classes = 3 if plan.task == "a" else 2
    primary = build_primary_network(base_filters=plan.base_filters, num_classes=classes,
                                    context_slices=plan.context_slices)
    fit_primary_network(plan, primary, subjects, rng, out_dir, started)
    if not plan.two_stage:
        return primary, None

    if plan.secondary_from_primary:
        def predict(t2: np.ndarray) -> np.ndarray:
            # Whole slices of the subject's grid, zero-padded to the U-Net's multiple of 16.
            batch = slice_context(t2, plan.context_slices)
            rows, cols = batch.shape[1:3]
            padded = np.pad(batch, ((0, 0), (0, -rows % 16), (0, -cols % 16), (0, 0)))
            return np.asarray(primary.predict(padded, batch_size=8, verbose=0))[:, :rows, :cols, 1]

        rois, targets = secondary_rois_from_primary(subjects, predict, rng)
    else:
        rois, targets = secondary_rois(subjects, rng)
    if not len(rois):
        raise ValueError("the training subjects hold no lesion on a slice with T1 FLAIR: the "
                         "secondary network has nothing to learn from (use more subjects)")
    secondary, accuracy = fit_secondary_network(plan, rois, targets, plan.seed,
                                                out_dir / "logs" / "secondary")
    secondary.save_weights(out_dir / "checkpoints" / "secondary.weights.h5")
    logger.info("secondary: %d ROIs, accuracy %.3f (%.0f s)", len(rois), accuracy,
                time.monotonic() - started)
    return primary, secondary


def fit_secondary_network(plan: TrainingPlan, rois: np.ndarray, targets: np.ndarray, seed: int,
                          log_dir: Path | None = None) -> tuple[Any, float]:
    """A secondary network trained on ``rois`` ``(n, 64, 64, 1)`` with ``targets`` (1 LACI,
    0 FCI): ``plan``'s epochs, RMSProp at its learning rate, batches of 32 shuffled by
    ``seed``, precise BatchNorm after; and its last epoch's training accuracy. Initial weights
    come from Keras' global seed, which the caller sets."""
    import keras

    from models.networks import build_secondary_network

    secondary = build_secondary_network()
    secondary.compile(
        optimizer=keras.optimizers.RMSprop(plan.learning_rate, rho=0.9),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    history = secondary.fit(
        **_fit_data(rois, targets, 32, seed), epochs=plan.secondary_epochs,
        callbacks=[] if log_dir is None else _log_callbacks(log_dir),
        verbose=2 if plan.progress else 0,
    )
    precise_batch_norm(secondary, rois, 32)
    return secondary, float(history.history["accuracy"][-1])


def make_training_subjects(plan: TrainingPlan, seeds: list[int]) -> tuple[list[SubjectArrays], int]:
    """The synthetic subjects of ``seeds`` plus the plan's labelled studies, and how many of
    those there were."""
    generator = plan_generator(plan)
    if plan.min_training_cnr > 0 and generator != "realistic":
        raise ValueError(f"min_training_cnr needs the realistic generator (lesions of drawn "
                         f"contrast); this plan's is {generator!r}")
    subjects: list[SubjectArrays] = list(map_on_cores(
        _subject_arrays, [(generator, seed, plan.grid_spacing_mm, plan.min_training_cnr)
                          for seed in seeds], at_least=4))
    labelled = 0
    if plan.data_dir is not None:
        from training.dicom_data import load_labelled_studies

        own = load_labelled_studies(plan.data_dir, grid_spacing_mm=plan.grid_spacing_mm)
        labelled = len(own)
        subjects.extend(own)
    if not subjects:
        raise ValueError("nothing to train on: no synthetic subjects and no labelled studies")
    return subjects, labelled


def _subject_arrays(job: tuple[str, int, float | None, float]) -> SubjectArrays:
    generator, seed, grid_spacing_mm, min_cnr = job
    if generator == "standard":
        from models.preprocessing import spacing_grid_shape
        from training.phantom import axial_geometry

        geometry = axial_geometry()
        matrix = (256, 256) if grid_spacing_mm is None else spacing_grid_shape(
            (geometry.rows, geometry.columns), geometry.pixel_spacing, grid_spacing_mm)
        return make_subject_arrays(seed, matrix)
    return make_scanner_subject_arrays(seed, generator == "realistic", grid_spacing_mm, min_cnr)


def train_package(plan: TrainingPlan, out_dir: Path) -> ModelManifest:
    import keras

    from models.inference import TwoStageEngine

    if not plan.two_stage or plan.task != "b":
        raise ValueError("a package is the two-stage network on task b (the ablation trains the rest)")
    keras.utils.set_random_seed(plan.seed)
    rng = np.random.default_rng(plan.seed)
    started = time.monotonic()
    seeds = subject_seeds(plan)
    subjects, labelled = make_training_subjects(plan, training_seeds(plan))
    logger.info("made %d training subjects in %.0f s", len(subjects), time.monotonic() - started)

    primary, secondary = train_networks(plan, subjects, rng, out_dir, started)
    assert secondary is not None  # two_stage, checked above

    validation = evaluate_subjects(TwoStageEngine(primary, secondary, trained_settings(plan)),
                                   seeds[plan.subjects :], generator=plan_generator(plan))
    metrics = summarise(validation)
    logger.info("validation metrics %s", metrics)
    trained_on = (
        f"{plan.subjects} synthetic subjects (seeds {seeds[0]}-{seeds[plan.subjects - 1]}) "
        + training_data_description(plan)
        + (f"; and {labelled} labelled studies (DICOM SEG ground truth) from "
           f"{plan.data_dir}" if plan.data_dir is not None else "")
    )
    return write_package(out_dir, plan, primary, secondary, trained_on=trained_on, metrics=metrics,
                         intervals=bootstrap_intervals(validation) if validation else {},
                         seconds=round(time.monotonic() - started))


def training_data_description(plan: TrainingPlan) -> str:
    """What the synthetic subjects of ``plan`` are, after their count and seeds."""
    if plan_generator(plan) == "realistic":
        return ("from MNI152 2009 tissue maps, the realistic generator: 0-20 lesions, most "
                "2-6 mm, lobulated, T2 FLAIR contrast 1.15-2.5 x white matter, cavitated LACI; "
                "look-alikes (perivascular spaces, caps, vessels, flow, speckles); scanners of "
                "0.45-1 mm in-plane, 3-7 mm slices with a drawn slice profile (box to about "
                "Gaussian) and in-plane point spread (0.7-1.2 mm acquired, apodised; noise "
                "correlated), tilted, T1 FLAIR on its own geometry")
    return "from MNI152 2009 tissue maps; " + (
        "varied scanners: 0.45-1 mm in-plane, 3-6 mm slices, tilted stacks, T1 FLAIR on its own "
        "geometry; irregular lesions" if plan.varied
        else "T2/T1 FLAIR 256x256x24, 0.9 mm, 5 mm slices")


def write_package(out_dir: Path, plan: TrainingPlan, primary: Any, secondary: Any, *,
                  trained_on: str, metrics: dict[str, float | None],
                  intervals: dict[str, tuple[float, float]], seconds: int) -> ModelManifest:
    """Write trained networks as a package in ``out_dir``: both ``.keras`` files, the
    manifest (``plan``'s name and version, ``TRAINED_SETTINGS``' operating point, ``metrics``
    from validation subjects) and the model card."""
    from models.networks import build_primary_network, build_secondary_network

    settings = trained_settings(plan)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Fresh, uncompiled networks with the trained weights: the package holds what inference
    # needs, neither optimizer state nor the training loss.
    for model, fresh, name in (
        (primary, build_primary_network(base_filters=plan.base_filters,
                                        context_slices=plan.context_slices), PRIMARY_FILE),
        (secondary, build_secondary_network(), SECONDARY_FILE),
    ):
        fresh.set_weights(model.get_weights())
        fresh.save(out_dir / name)
    manifest = ModelManifest(
        name=plan.name,
        version=plan.version,
        files={name: sha256_file(out_dir / name) for name in (PRIMARY_FILE, SECONDARY_FILE)},
        input_matrix=settings.input_matrix,
        lesion_threshold=settings.lesion_threshold,
        laci_threshold=settings.laci_threshold,
        min_lesion_voxels=settings.min_lesion_voxels,
        grid_spacing_mm=settings.grid_spacing_mm,
        trained_on=trained_on,
        intended_use=SYNTHETIC_DATA_WARNING,
        metrics=measured_metrics(metrics),
        training={
            "seconds": seconds,
            "framework": training_backend(),
            "primary": ("U-Net, " + LOSS_NAMES[plan.loss]
                        + f", RMSProp (learning rate {plan.learning_rate}"
                        + (" with cosine decay to 5 %" if plan.cosine_decay else "") + ", rho 0.9), "
                        + ("lesion-rich pre-training then all slices" if plan.pretrain_epochs
                           else "lesion-oversampled crops")),
            "secondary": "CNN on 32x32 T1 FLAIR ROIs at "
                         + ("the primary network's lesions" if plan.secondary_from_primary
                            else "ground-truth lesions") + ", 64x64, gamma 1.5",
            **{k: _json_value(v) for k, v in plan.__dict__.items()
               if k not in ("name", "version", "progress")},
        },
    )
    (out_dir / "manifest.json").write_text(manifest.to_json())
    (out_dir / CARD_NAME).write_text(model_card(manifest, plan, metrics, intervals))
    return manifest


def _json_value(value: Any) -> Any:
    """A plan field as the manifest's JSON reads it back (a path as text, a tuple as a list),
    so that a written manifest equals the one read from disk."""
    if isinstance(value, Path):
        return str(value)
    return list(value) if isinstance(value, tuple) else value


def model_card(manifest: ModelManifest, plan: TrainingPlan, metrics: dict[str, float | None],
               intervals: dict[str, tuple[float, float]]) -> str:
    """The card written next to a package: what it is, what it was trained on and how, its
    validation metrics with bootstrap intervals, and its limits."""
    table = report_markdown(metrics, intervals, "Validation (held-out synthetic subjects)")
    recipe = ", ".join(f"{key} {value}" for key, value in manifest.training.items())
    context = ("" if plan.context_slices == 1 else
               f" (each slice with its {plan.context_slices - 1} nearest neighbours as channels; "
               "the paper's network sees one slice)")
    return f"""# Model card: {manifest.name} {manifest.version}

**Not for clinical use.** {manifest.intended_use}

## What it does
The two networks of Liu et al. (BMC Med Inform Decis Mak 2021): a U-Net on T2 FLAIR{context}
segments lesion areas; a small CNN classifies each lesion as FCI or LACI from a 32x32 T1 FLAIR
ROI at its centroid, upsampled to 64x64, gamma 1.5; its verdict corrects the label map.

## Training data
{manifest.trained_on}. No patient data unless `--data` named a hospital's own studies.

## Recipe
{recipe}.

## Metrics
{table}
`lacuna-train evaluate --model DIR [--varied]` measures it on more subjects; `lacuna-train crossval`
measures its recipe by five-fold cross-validation split by subject, and `lacuna-train ablation`
each of the paper's variants.

## Known limits
- Synthetic lesions ({"lobulated blobs of drawn contrast" if plan_generator(plan) == "realistic"
  else "ellipsoids" + (", irregular" if plan.varied else "")}) are not real FCI and LACI:
  these figures say the pipeline works, not that the model would work on patients.
- {"Scanners varied in training (0.45-1 mm in-plane, 3-7 mm slices)" if plan_generator(plan) == "realistic"
   else "Scanners varied in training (0.45-1 mm, 3-6 mm slices)" if plan.varied else
   "One scanner geometry (axial, 0.9 mm, 5 mm slices) was seen in training"}; {
   f"every slice is resampled to {manifest.grid_spacing_mm} mm pixels and the primary network "
   f"runs on {manifest.input_matrix[0]}x{manifest.input_matrix[1]} tiles of it"
   if manifest.grid_spacing_mm else
   f"other resolutions are resized to the {manifest.input_matrix[0]}x{manifest.input_matrix[1]} model grid"}.
- Chronic lacunes that are CSF-dark on T2 FLAIR are outside the paper's definition.
- Validation figures above come from the generator the model was trained on: training
  figures. `lacuna-train evaluate` (the independent test generator by default) measures it where
  it was not made.
"""
