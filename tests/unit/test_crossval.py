"""Cross-validation folds are split by subject; the oversampling schedule per epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.crossval import CrossValidation, crossval_markdown, subject_folds
from training.metrics import bootstrap_intervals, count_subject, recall_by_size, summarise
from training.train import (
    LOSS_NAMES,
    LOSSES,
    RECIPES,
    TrainingPlan,
    lesion_fraction,
    package_plan,
    recipe_plan,
    training_seeds,
)


def test_every_subject_is_tested_once_and_never_trained_on_in_its_fold() -> None:
    seeds = list(range(10_000, 10_042))
    folds = subject_folds(seeds, 5, seed=1)
    assert [f.number for f in folds] == [1, 2, 3, 4, 5]
    tested = [s for fold in folds for s in fold.test]
    assert sorted(tested) == seeds  # each subject in exactly one test set
    assert sorted(len(f.test) for f in folds) == [8, 8, 8, 9, 9]
    for fold in folds:
        assert not set(fold.test) & set(fold.training)
        assert sorted(fold.test + fold.training) == seeds
    assert subject_folds(seeds, 5, seed=1) == folds  # seeded
    assert subject_folds(seeds, 5, seed=2) != folds


def test_a_fold_packages_recipe_trains_on_its_fold_only() -> None:
    """A fold's package names its test subjects; whatever trains from its recipe again (a
    fine-tune, new classifiers) leaves them out, also after the manifest's JSON round trip."""
    from dataclasses import replace

    from models.package import ModelManifest

    plan = TrainingPlan(subjects=10, seed=1)
    assert training_seeds(plan) == list(range(10_000, 10_010))
    fold = subject_folds(training_seeds(plan), 5, seed=1)[0]
    fold_plan = replace(plan, held_out_seeds=tuple(fold.test))
    assert training_seeds(fold_plan) == list(fold.training)
    training = {k: list(v) if isinstance(v, tuple) else v for k, v in fold_plan.__dict__.items()
                if k not in ("name", "version", "progress", "data_dir")}
    manifest = ModelManifest(name=plan.name, version=plan.version, files={},
                             input_matrix=(256, 256), lesion_threshold=0.5, laci_threshold=0.5,
                             min_lesion_voxels=1, trained_on="", training=training)
    assert package_plan(manifest) == fold_plan
    assert training_seeds(package_plan(manifest)) == list(fold.training)


def test_the_report_has_every_fold_the_pooled_table_and_recall_by_size() -> None:
    truth = np.zeros((2, 16, 16), np.uint8)
    truth[0, 2:4, 2:4] = 1
    truth[1, 8:14, 8:14] = 2
    found, missed = truth.copy(), truth.copy()
    missed[0] = 0  # the small lesion
    counts = [count_subject(truth, found, 4.0), count_subject(truth, missed, 4.0)]
    folds = subject_folds([1, 2], 2, seed=1)
    result = CrossValidation(folds, [summarise(counts[:1]), summarise(counts[1:])], summarise(counts),
                             bootstrap_intervals(counts, resamples=20), recall_by_size(counts))
    report = crossval_markdown(result, TrainingPlan(subjects=2))
    assert "# 2-fold cross-validation by subject" in report
    assert "| 1 | 1 | 100.00 |" in report and "| mean +- sd | 2 |" in report
    assert "| detection recall (IoU > 0.6) | 75.00 |" in report
    assert "| 0-30 | 2 | 50.00 | 50.00 |" in report and "| 100-500 | 2 | 100.00 | 100.00 |" in report


@pytest.mark.parametrize("seeds, folds, message", [
    (list(range(3)), 5, "cannot fill"), (list(range(10)), 1, "at least 2"),
    ([1, 1, 2, 3], 2, "repeat"),
])
def test_impossible_splits_are_refused(seeds: list[int], folds: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        subject_folds(seeds, folds, seed=1)


def test_oversampling_schedules() -> None:
    assert [lesion_fraction(TrainingPlan(), e) for e in range(3)] == [0.7, 0.7, 0.7]
    paper = TrainingPlan(primary_epochs=5, pretrain_epochs=3)
    assert [lesion_fraction(paper, e) for e in range(5)] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert lesion_fraction(TrainingPlan(oversample=False, pretrain_epochs=3), 0) == 0.0


def test_recipes() -> None:
    assert recipe_plan("lacuna") == TrainingPlan()
    paper = recipe_plan("paper", subjects=3)
    assert (paper.loss, paper.learning_rate, paper.pretrain_epochs) == ("ce", 0.01, 3)
    assert paper.rotate_lesion_crops and paper.secondary_from_primary and paper.subjects == 3
    assert recipe_plan("paper", learning_rate=0.001).learning_rate == 0.001  # overrides win
    # The shipped recipe decays the learning rate; the paper keeps RMSProp's constant.
    assert TrainingPlan().cosine_decay and not paper.cosine_decay
    # Both recipes show the primary network one slice (neighbours: --context-slices).
    assert TrainingPlan().context_slices == paper.context_slices == 1
    # The shipped recipe's soft Dice is each crop's (since 0.4.0); every loss has a card name.
    assert TrainingPlan().loss == "crop-dice+ce"
    assert set(LOSS_NAMES) == set(LOSSES)
    assert set(RECIPES) == {"lacuna", "paper"}
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_plan("nope")


def test_an_unknown_loss_is_refused_before_training() -> None:
    import numpy as np

    from training.train import train_networks

    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        train_networks(TrainingPlan(loss="focal"), [], np.random.default_rng(0), Path("unused"), 0.0)


def test_per_lesion_oversampling_gives_a_small_lesion_as_many_crops_as_a_large_one() -> None:
    import numpy as np

    from training.dataset import SubjectArrays, primary_crops

    labels = np.zeros((3, 256, 256), np.uint8)
    labels[1, 20:80, 20:80] = 1  # 3,600 voxels
    labels[1, 200:202, 200:202] = 2  # 4 voxels, far from the large one
    subject = SubjectArrays(t2=np.full(labels.shape, 0.5, np.float32),
                            t1=np.zeros(labels.shape, np.float32), labels=labels)

    def crops_with_the_small_lesion(per_lesion: bool) -> int:
        _, masks = primary_crops([subject], np.random.default_rng(0), 400, size=64,
                                 lesion_fraction=1.0, augment=False, by_class=True,
                                 per_lesion=per_lesion)
        return int((masks.reshape(len(masks), -1) == 2).any(axis=1).sum())

    assert crops_with_the_small_lesion(per_lesion=False) < 10  # ~4 in 3,604 draws
    assert 150 < crops_with_the_small_lesion(per_lesion=True) < 250  # about half


def test_context_crops_hold_the_slice_and_its_neighbours_and_the_same_draws() -> None:
    """With 3 context slices a crop's middle channel is the crop a 1-slice plan draws from the
    same random stream; the others are the slices either side, zeros past the stack's ends."""
    import numpy as np

    from training.dataset import SubjectArrays, primary_crops

    labels = np.zeros((4, 128, 128), np.uint8)
    labels[[0, 1, 3], 60:64, 60:64] = 1  # lesions on both end slices
    t2 = np.arange(1, 5, dtype=np.float32)[:, None, None] * np.ones(labels.shape, np.float32) / 4
    subject = SubjectArrays(t2=t2, t1=np.zeros(labels.shape, np.float32), labels=labels)
    alone, masks = primary_crops([subject], np.random.default_rng(0), 200, size=64)
    context, context_masks = primary_crops([subject], np.random.default_rng(0), 200, size=64,
                                           context_slices=3)
    assert alone.shape == (200, 64, 64, 1) and context.shape == (200, 64, 64, 3)
    np.testing.assert_array_equal(context[..., 1:2], alone)
    np.testing.assert_array_equal(context_masks, masks)
    # Slice k holds (k + 1) / 4 times the intensity scaling; recover k and check the neighbours.
    for crop in context:
        scale_k = crop[32, 32, 1]
        below, above = crop[32, 32, 0], crop[32, 32, 2]
        ratios = [round(float(value / scale_k), 4) for value in (below, above)]
        assert ratios in ([0.0, 2.0], [0.5, 1.5], [round(2 / 3, 4), round(4 / 3, 4)],
                          [0.75, 0.0])  # slices 0, 1, 2, 3
    ends = {tuple(round(float(crop[32, 32, c]), 6) == 0.0 for c in (0, 2)) for crop in context}
    assert ends == {(True, False), (False, False), (False, True)}


@pytest.mark.parametrize("jitter", [0.0, 0.1, 0.3])
def test_augmentation_scales_crop_intensity_within_the_jitter(jitter: float) -> None:
    import numpy as np

    from training.dataset import SubjectArrays, primary_crops

    labels = np.zeros((3, 128, 128), np.uint8)
    labels[1, 60:64, 60:64] = 1
    subject = SubjectArrays(t2=np.full(labels.shape, 0.5, np.float32),
                            t1=np.zeros(labels.shape, np.float32), labels=labels)
    images, _ = primary_crops([subject], np.random.default_rng(0), 200, size=64,
                              augment=True, intensity_jitter=jitter)
    scales = images.reshape(len(images), -1).mean(axis=1) / 0.5
    assert np.all(np.abs(scales - 1.0) <= jitter + 1e-6)
    assert scales.max() - scales.min() >= jitter  # 200 draws spread over the whole range


def test_secondary_rois_skip_slices_without_t1_flair() -> None:
    import numpy as np

    from training.dataset import SubjectArrays, secondary_rois, secondary_rois_from_primary

    labels = np.zeros((3, 128, 128), np.uint8)
    labels[0:2, 60:64, 60:64] = 2  # a LACI lesion on slices 0 and 1
    t1 = np.full(labels.shape, 0.5, np.float32)
    t1[1] = 0.0  # slice 1 has no T1 FLAIR partner
    subject = SubjectArrays(t2=labels.astype(np.float32), t1=t1, labels=labels)

    rois, targets = secondary_rois([subject], np.random.default_rng(0))
    assert len(rois) == 3 and targets.tolist() == [1.0] * 3  # 3 jittered ROIs of slice 0 only
    assert np.allclose(rois, 0.5 ** 1.5)  # none of them from the empty slice
    rois, _ = secondary_rois_from_primary([subject], lambda t2: t2 / 2,
                                          np.random.default_rng(0))
    assert len(rois) == 1


@pytest.mark.parametrize(("argv", "expected"), [
    ([], None), (["--cosine-decay"], True), (["--no-cosine-decay"], False)])
def test_cosine_decay_is_overridden_only_when_given(argv: list[str], expected: bool | None) -> None:
    from training.cli import _recipe_flags, build_parser

    args = build_parser().parse_args(["train", "--out", "unused", *argv])
    assert _recipe_flags(args).get("cosine_decay") is expected
    plan = recipe_plan("paper", **_recipe_flags(args))
    assert plan.cosine_decay is (expected or False)


@pytest.mark.parametrize(("argv", "expected"), [
    ([], TrainingPlan().version), (["--version", "9.1.0"], "9.1.0")])
def test_train_version_is_the_plans_unless_given(argv: list[str], expected: str) -> None:
    from training.cli import _train_plan, build_parser

    args = build_parser().parse_args(["train", "--out", "unused", "--seed", "4", *argv])
    plan = _train_plan(args)
    assert plan.version == expected and plan.seed == 4


def test_train_width_and_crops_are_the_plans_unless_given() -> None:
    from training.cli import _train_plan, build_parser

    default = _train_plan(build_parser().parse_args(["train", "--out", "unused"]))
    assert (default.base_filters, default.primary_crops_per_epoch) == (
        TrainingPlan().base_filters, TrainingPlan().primary_crops_per_epoch)
    wide = _train_plan(build_parser().parse_args(
        ["train", "--out", "unused", "--base-filters", "24", "--crops", "6400"]))
    assert (wide.base_filters, wide.primary_crops_per_epoch) == (24, 6400)


def test_the_training_commands_load_no_model_registry() -> None:
    """``lacuna-train train`` runs on a GPU machine without SQLAlchemy (training/gpu/train.sh):
    parsing its commands imports neither the registry nor the database layer."""
    import subprocess
    import sys

    probe = ("import sys; from training.cli import build_parser; "
             "build_parser().parse_args(['train', '--out', 'unused']); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy' "
             "or m == 'node.services.registry'))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(("argv", "expected"), [
    ([], "ce"), (["--loss", "crop-dice+ce"], "crop-dice+ce"), (["--loss", "dice+ce"], "dice+ce")])
def test_loss_flag_overrides_the_recipes_loss(argv: list[str], expected: str) -> None:
    from training.cli import _recipe_flags, build_parser

    args = build_parser().parse_args(["crossval", "--out", "unused", *argv])
    assert recipe_plan("paper", **_recipe_flags(args)).loss == expected


def test_ablation_rows_vary_the_recipe_and_flags_given() -> None:
    from training.cli import _ablation_plan, build_parser

    args = build_parser().parse_args(["ablation", "--out", "unused", "--recipe", "paper",
                                      "--loss", "crop-dice+ce", "--context-slices", "3",
                                      "--epochs", "2"])
    plan = _ablation_plan(args)
    assert (plan.loss, plan.context_slices, plan.primary_epochs) == ("crop-dice+ce", 3, 2)
    assert plan.learning_rate == 0.01 and plan.rotate_lesion_crops  # the paper's, as the rows' base
    default = _ablation_plan(build_parser().parse_args(["ablation", "--out", "unused"]))
    assert (default.loss, default.context_slices) == (recipe_plan("lacuna").loss, 1)
