"""Checkpoint weights and the start-up checks of the Ray Train loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from recray.config import ModelConfig, TrainConfig
from recray.model.towers import RetrievalModel
from recray.schema import HISTORY_IDS, HISTORY_RATINGS, TARGET_ID
from recray.training.trainer import (
    CrashOnce,
    check_enough_examples,
    checkpointed_epochs,
    load_weights,
    save_weights,
    train,
)


def _model(seed: int, config: ModelConfig, vocab_size: int = 12) -> RetrievalModel:
    tf.keras.utils.set_random_seed(seed)
    vectors = np.random.default_rng(0).normal(size=(vocab_size, 6)).astype(np.float32)
    vectors[0] = 0.0
    model = RetrievalModel(vectors, config)
    model.build_towers(max_history=4)
    return model


def test_weights_round_trip_with_the_epoch(tmp_path: Path):
    config = ModelConfig(key_dim=4, dense_units=8, output_dim=4)
    trained, fresh = _model(1, config), _model(2, config)
    # Some weights start at zero whatever the seed (recency vectors, biases).
    assert any(
        not np.allclose(a, b)
        for a, b in zip(trained.trainable_weights, fresh.trainable_weights, strict=True)
    )

    save_weights(trained, tmp_path, epoch=3)
    assert load_weights(fresh, tmp_path) == 3

    for saved, loaded in zip(
        trained.trainable_weights, fresh.trainable_weights, strict=True
    ):
        np.testing.assert_array_equal(saved.numpy(), loaded.numpy())


def test_checkpoints_keep_each_epochs_metrics_and_the_later_of_two_wins(
    tmp_path: Path,
):
    model = _model(1, ModelConfig(key_dim=4, dense_units=8, output_dim=4))
    # Epoch 2 twice: once before a crash (never registered), once resumed.
    for name, epoch, loss in [
        ("checkpoint_2026-01-01_00-00-01", 1, 3.0),
        ("checkpoint_2026-01-01_00-00-02", 2, 2.0),
        ("checkpoint_2026-01-01_00-05-00", 2, 1.5),
    ]:
        (tmp_path / name).mkdir()
        save_weights(model, tmp_path / name, epoch, {"loss": loss})

    assert checkpointed_epochs(tmp_path) == [
        {"epoch": 1, "loss": 3.0},
        {"epoch": 2, "loss": 1.5},
    ]
    assert checkpointed_epochs(tmp_path / "nothing-here") == []


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


def _compiled(seed: int, config: ModelConfig) -> RetrievalModel:
    model = _model(seed, config)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    return model


def test_adam_moments_and_step_round_trip(tmp_path: Path):
    config = ModelConfig(key_dim=4, dense_units=8, output_dim=4)
    trained = _compiled(1, config)
    ids = np.random.default_rng(0).integers(1, 12, size=(32, 4)).astype(np.int32)
    features = {HISTORY_IDS: ids, HISTORY_RATINGS: np.zeros((32, 4), np.float32)}
    trained.fit(features, ids[:, 0], batch_size=16, epochs=1, verbose=0)
    save_weights(trained, tmp_path, epoch=1)

    fresh = _compiled(2, config)
    assert load_weights(fresh, tmp_path) == 1
    saved = [v.numpy() for v in trained.optimizer.variables]
    loaded = [v.numpy() for v in fresh.optimizer.variables]
    assert len(saved) == len(loaded) > 1 + len(trained.trainable_weights)
    for before, after in zip(saved, loaded, strict=True):
        np.testing.assert_array_equal(before, after)
    assert int(fresh.optimizer.iterations.numpy()) == 2


def _examples(count: int, vocab_size: int, length: int, seed: int):
    import ray.data

    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab_size, size=(count, length)).astype(np.int32)
    return ray.data.from_numpy(ids).map_batches(
        lambda batch: {
            HISTORY_IDS: batch["data"],
            HISTORY_RATINGS: np.zeros(batch["data"].shape, np.float32),
            TARGET_ID: batch["data"][:, 0],
        },
        batch_format="numpy",
    )


@pytest.mark.slow
def test_a_killed_worker_resumes_from_the_last_checkpoint(ray_cluster, tmp_path):
    vectors = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)
    vectors[0] = 0.0
    marker = tmp_path / "killed.pid"
    result = train(
        ModelConfig(num_heads=1, key_dim=4, dense_units=8, output_dim=4),
        TrainConfig(num_workers=2, batch_size=16, epochs=3, id_baseline=False),
        vectors,
        np.ones(20),
        {"train": _examples(128, 20, 4, 1), "validation": _examples(16, 20, 4, 2)},
        max_history=4,
        storage_dir=tmp_path / "train",
        crash_once=CrashOnce(after_epoch=1, marker=marker, rank=1),
    )

    assert marker.is_file()  # a worker really was killed
    assert [e["epoch"] for e in result.epochs] == [1, 2, 3]
    assert [e["resumed_from_epoch"] for e in result.epochs] == [0, 1, 1]
    # Adam's step count carried over the restart (the moments with it): it
    # grows by the same number of steps every epoch instead of restarting.
    steps = [e["optimizer_steps"] for e in result.epochs]
    assert steps[0] > 0 and steps == [steps[0], 2 * steps[0], 3 * steps[0]]
    final = _model(
        0, ModelConfig(num_heads=1, key_dim=4, dense_units=8, output_dim=4), 20
    )
    assert load_weights(final, result.checkpoint_dir) == 3


def test_gpu_workers_replace_cpu_workers_and_mixed_precision_needs_them():
    config = TrainConfig(num_workers=2, gpu_workers=3, mixed_precision=True)
    assert (config.workers, config.on_gpu) == (3, True)
    assert (TrainConfig(num_workers=2).workers, TrainConfig().on_gpu) == (2, False)
    with pytest.raises(ValueError, match="--gpu-workers"):
        TrainConfig(mixed_precision=True)
    with pytest.raises(ValueError, match="batch of 64 on each of 3 workers"):
        check_enough_examples(100, TrainConfig(gpu_workers=3, batch_size=64))
