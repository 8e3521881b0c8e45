"""Checkpoint weights and the start-up checks of the Ray Train loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from recray.config import ModelConfig, TrainConfig
from recray.model.towers import RetrievalModel
from recray.training.trainer import (
    check_enough_examples,
    load_weights,
    save_weights,
)


def _model(seed: int, config: ModelConfig) -> RetrievalModel:
    tf.keras.utils.set_random_seed(seed)
    vectors = np.random.default_rng(0).normal(size=(12, 6)).astype(np.float32)
    vectors[0] = 0.0
    model = RetrievalModel(vectors, config)
    model.build_towers(max_history=4)
    return model


def test_weights_round_trip_with_the_epoch(tmp_path: Path):
    config = ModelConfig(key_dim=4, dense_units=8, output_dim=4)
    trained, fresh = _model(1, config), _model(2, config)
    assert not np.allclose(trained.trainable_weights[0], fresh.trainable_weights[0])

    save_weights(trained, tmp_path, epoch=3)
    assert load_weights(fresh, tmp_path) == 3

    for saved, loaded in zip(
        trained.trainable_weights, fresh.trainable_weights, strict=True
    ):
        np.testing.assert_array_equal(saved.numpy(), loaded.numpy())


def test_weights_of_another_shape_are_refused(tmp_path: Path):
    save_weights(_model(1, ModelConfig(dense_units=8)), tmp_path, epoch=1)
    with pytest.raises(ValueError, match="another model config"):
        load_weights(_model(1, ModelConfig(dense_units=16)), tmp_path)


def test_too_few_examples_name_the_settings_to_change():
    config = TrainConfig(num_workers=2, batch_size=64)
    check_enough_examples(128, config, num_validation=2)

    with pytest.raises(ValueError, match="127 training examples.*`--batch-size`"):
        check_enough_examples(127, config, num_validation=2)
    with pytest.raises(ValueError, match="1 validation examples.*`--num-workers`"):
        check_enough_examples(128, config, num_validation=1)
