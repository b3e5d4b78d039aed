"""Parts of the training recipe on tiny Keras models: precise BatchNorm and the learning rate."""

from __future__ import annotations

import keras
import numpy as np

from training.train import TrainingPlan, precise_batch_norm, primary_learning_rate


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
