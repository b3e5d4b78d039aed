"""Parts of the training recipe on tiny Keras models: precise BatchNorm, the learning rate and
the primary network's losses."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from training.cli import LOSS_CHOICES
from training.train import LOSS_NAMES, LOSSES, TrainingPlan, precise_batch_norm, primary_learning_rate


def test_precise_batch_norm_sets_the_moving_statistics_to_the_average_over_the_batches() -> None:
    inputs = keras.Input(shape=(3,))
    norm = keras.layers.BatchNormalization(momentum=0.9)
    model = keras.Model(inputs, norm(inputs))
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(40, 3)) * [1.0, 2.0, 3.0] + [5.0, -1.0, 0.5]).astype(np.float32)

    assert precise_batch_norm(model, data, batch_size=8) == 5

    batches = data.reshape(5, 8, 3)
    np.testing.assert_allclose(np.asarray(norm.moving_mean), batches.mean(axis=1).mean(axis=0),
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(norm.moving_variance), batches.var(axis=1).mean(axis=0),
                               rtol=1e-4)
    assert norm.momentum == 0.9  # the training momentum is given back
    # Inference now normalises with those statistics: the data comes out near mean 0, std 1.
    out = np.asarray(model(data, training=False))
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(out.std(axis=0), 1.0, atol=0.1)  # batch variances run low


def test_primary_learning_rate_is_constant_or_a_cosine_over_every_step() -> None:
    assert primary_learning_rate(TrainingPlan(learning_rate=0.002, cosine_decay=False)) == 0.002
    plan = TrainingPlan(learning_rate=0.002, cosine_decay=True, primary_epochs=3,
                        primary_crops_per_epoch=100, batch_size=16)  # 7 steps an epoch
    schedule = primary_learning_rate(plan)
    assert float(schedule(0)) == np.float32(0.002)
    assert np.isclose(float(schedule(21 // 2)), 0.002 * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * 10 / 21))))
    assert np.isclose(float(schedule(21)), 0.002 * 0.05)


def _one_hot(mask: np.ndarray) -> np.ndarray:
    return np.eye(2, dtype=np.float32)[mask.astype(np.int64)]


def test_crop_dice_charges_extra_voxels_around_a_tiny_lesion_beside_a_large_one() -> None:
    truth = np.zeros((2, 16, 16), dtype=np.uint8)
    truth[0, 2:14, 2:14] = 1  # a large lesion in one crop
    truth[1, 8, 8] = 1  # a one-voxel lesion in the other
    exact = truth.copy()
    grown = truth.copy()
    grown[1, 7:10, 8] = grown[1, 8, 7:10] = 1  # four extra voxels around the small one

    def dice_term(name: str, predicted: np.ndarray, true: np.ndarray = truth) -> float:
        y_true, y_pred = _one_hot(true), _one_hot(predicted)
        return float(LOSSES[name](y_true, y_pred)) - float(LOSSES["ce"](y_true, y_pred))

    assert dice_term("dice+ce", exact) == dice_term("crop-dice+ce", exact) == 0.0
    # Over the batch: 1 - (2 * 145 + 1) / (145 + 149 + 1), four voxels beside 145.
    assert np.isclose(dice_term("dice+ce", grown), 1 - 291 / 295, atol=1e-6)
    # Per crop: the small crop's Dice falls to (2 + 1) / (1 + 5 + 1), the mean by half of that.
    assert np.isclose(dice_term("crop-dice+ce", grown), (1 - 3 / 7) / 2, atol=1e-6)
    # A crop with no lesion, predicted empty, has Dice 1 (the smoothing voxel), not 0.
    empty = np.zeros_like(truth)
    assert np.isclose(dice_term("crop-dice+ce", empty, empty), 0.0, atol=1e-6)


@pytest.mark.parametrize(("name", "miss"), [("crop-tversky+ce", 0.7), ("crop-tversky85+ce", 0.85)])
def test_crop_tversky_charges_a_missed_voxel_more_than_a_false_one(name: str, miss: float) -> None:
    truth = np.zeros((1, 16, 16), dtype=np.uint8)
    truth[0, 4:8, 4:8] = 1  # 16 lesion voxels
    missed, spurious = truth.copy(), truth.copy()
    missed[0, 4, 4:8] = 0  # four voxels missed
    spurious[0, 8, 4:8] = 1  # four voxels too many

    def tversky_term(predicted: np.ndarray) -> float:
        y_true, y_pred = _one_hot(truth), _one_hot(predicted)
        return float(LOSSES[name](y_true, y_pred)) - float(LOSSES["ce"](y_true, y_pred))

    assert np.isclose(tversky_term(truth), 0.0, atol=1e-6)
    # 1 - (TP + 1) / (TP + (1 - miss) FP + miss FN + 1), with TP 12, FN 4 and TP 16, FP 4.
    assert np.isclose(tversky_term(missed), 1 - 13 / (13 + miss * 4), atol=1e-6)
    assert np.isclose(tversky_term(spurious), 1 - 17 / (17 + (1 - miss) * 4), atol=1e-6)
    assert tversky_term(missed) > tversky_term(spurious)


def test_the_command_line_offers_every_loss_and_no_other() -> None:
    assert sorted(LOSS_CHOICES) == sorted(LOSSES) == sorted(LOSS_NAMES)
