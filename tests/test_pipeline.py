"""The whole main job on a few hundred real ratings, through real Ray Train."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recray import pipeline
from recray.config import (
    DataConfig,
    EmbeddingConfig,
    ModelConfig,
    PipelineConfig,
    TrainConfig,
    load_yaml,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(ray_cluster, tiny_movielens, tmdb_5000, tmp_path_factory):
    """Run every stage once on tiny data with 2 training workers."""
    root = tmp_path_factory.mktemp("runs")
    config = PipelineConfig(
        name="tiny",
        runs_dir=root,
        data=DataConfig(data_dir=tiny_movielens, tmdb_path=tmdb_5000, max_history=5),
        embedding=EmbeddingConfig(cache_dir=root / "cache"),
        model=ModelConfig(num_heads=2, key_dim=8, dense_units=16, output_dim=8),
        train=TrainConfig(num_workers=2, batch_size=16, epochs=2, id_baseline=True),
    )
    paths = pipeline.run(config)
    return config, paths


def _json(path: Path):
    return json.loads(path.read_text())


def test_metrics_cover_model_and_popularity_on_the_same_examples(tiny_run):
    _, paths = tiny_run
    metrics = _json(paths.metrics)
    histories = _json(paths.histories)

    scorers = {"model", "popularity", "ease", "id_two_tower"}
    assert scorers <= set(metrics)
    for name, values in metrics.items():
        assert set(values) == {"hr@10", "hr@100", "ndcg@10", "examples"}
        assert 0.0 <= values["hr@10"] <= values["hr@100"] <= 1.0
        if name in scorers:
            assert values["examples"] == histories["examples"]["validation"] > 0
    # Warm and cold-start targets split the same examples.
    info = _json(paths.evaluation)
    assert info["cold_start"]["cold_movies"] > 0
    for name in scorers:
        parts = [
            metrics.get(f"{part}:{name}", {"examples": 0}) for part in ("warm", "cold")
        ]
        assert sum(part["examples"] for part in parts) == metrics[name]["examples"]
    assert metrics["cold:model"]["examples"] == info["examples"]["cold"] > 0
    # The users behind those examples: validation users (those with more
    # than one rating), a part of them with cold-start targets.
    assert 0 < info["users"]["all"] <= histories["users"]["validation"]
    assert 0 < info["users"]["cold"] <= info["users"]["all"]
    shares = info["users"]
    assert (
        0
        < shares["cold_share_of_largest_user"]
        <= shares["cold_share_of_largest_8_users"]
        <= 1
    )
    # Id-based scorers know nothing of a movie kept out of training.
    for name in ("popularity", "ease", "id_two_tower"):
        assert metrics[f"cold:{name}"]["hr@100"] == 0.0
    # A few hundred movies: a target excluded by mistake would never be hit.
    assert metrics["model"]["hr@100"] > 0.0
    assert metrics["popularity"]["hr@100"] > 0.0


def test_every_rating_is_accounted_for(tiny_run, tiny_movielens):
    _, paths = tiny_run
    report = _json(paths.data_report)
    histories = _json(paths.histories)
    ratings = sum(1 for _ in open(tiny_movielens / "ratings.csv")) - 1

    assert report["rows_read"]["ratings.csv"] == ratings
    assert report["total_dropped"] == 0
    # Every rating but each user's first is one example, in one split or other.
    users = sum(histories["users"].values())
    assert sum(histories["examples"].values()) == ratings - users


def test_training_reports_each_epoch(tiny_run):
    _, paths = tiny_run
    epochs = _json(paths.training)
    assert [epoch["epoch"] for epoch in epochs] == [1, 2]
    assert all(
        np.isfinite([epoch["loss"], epoch["val_loss"]]).all() for epoch in epochs
    )


def test_the_towers_read_text_then_year_and_genres(tiny_run):
    from recray.data.movie_features import GENRES, YEAR_CENTRES

    config, paths = tiny_run
    counts = pipeline._training_rating_counts(config, paths)
    table = pipeline.movie_table(config, paths, counts)
    text = pipeline._text_table(paths)

    extra = len(YEAR_CENTRES) + len(GENRES)
    assert table.shape == (text.shape[0], text.shape[1] + extra)
    np.testing.assert_array_equal(table[:, : text.shape[1]], text)
    # Serving reads what training read: the spec and width, written with the
    # models. Years clip at the latest movie training users rated, which is
    # older than every cold-start movie.
    saved = _json(paths.movie_features)
    assert saved["year_features"] and saved["genre_features"]
    assert saved["width"] == table.shape[1]
    years, _ = pipeline.read_years_and_genres(paths.movie_texts)
    assert saved["last_year"] == years[counts[1:] > 0].max()
    assert saved["last_year"] < _json(paths.evaluation)["cold_start"]["first_year"]


def test_config_is_saved_and_reloads(tiny_run):
    config, paths = tiny_run
    assert load_yaml(PipelineConfig, paths.config) == pipeline.resolve_paths(config)


def test_exported_query_model_serves_the_trained_weights(tiny_run):
    config, paths = tiny_run
    candidates = np.load(paths.candidate_embeddings)
    assert candidates.shape[1] == config.model.embedding_dim
    np.testing.assert_array_equal(candidates[0], 0.0)  # the padding row

    # The SavedModel, loaded in a fresh process with TensorFlow alone.
    script = f"""
import json, tensorflow as tf
serve = tf.saved_model.load({str(paths.query_model)!r}).signatures["serving_default"]
out = serve(history_ids=tf.constant([[1, 2, 0]], tf.int32),
            history_ratings=tf.constant([[0.5, -0.5, 0.0]], tf.float32))
print(json.dumps(out["query_embedding"].numpy().tolist()))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    exported = np.array(json.loads(done.stdout.strip().splitlines()[-1]))

    # The same history through a model rebuilt from the last checkpoint.
    import tensorflow as tf

    from recray.model.towers import RetrievalModel
    from recray.training.trainer import load_weights

    last = sorted(p for p in paths.train.glob("checkpoint_*") if p.is_dir())[-1]
    counts = pipeline._training_rating_counts(config, paths)
    table = pipeline.movie_table(config, paths, counts)
    model = RetrievalModel(table, config.model)
    model.build_towers(config.data.max_history)
    assert load_weights(model, last) == config.train.epochs
    rebuilt = model.query_model(
        {
            "history_ids": tf.constant([[1, 2, 0]], tf.int32),
            "history_ratings": tf.constant([[0.5, -0.5, 0.0]], tf.float32),
        }
    ).numpy()

    np.testing.assert_allclose(exported, rebuilt, atol=1e-5)
    # Unit length, then the column of ones that meets each movie's bias.
    width = config.model.output_dim
    assert np.linalg.norm(exported[0, :width]) == pytest.approx(1.0, abs=1e-4)
    ones = np.ones(int(config.model.movie_bias))
    np.testing.assert_array_equal(exported[0, width:], ones)


def test_evaluate_alone_reproduces_the_metrics(tiny_run):
    config, paths = tiny_run
    before = _json(paths.metrics)
    pipeline.run(config, stages=["evaluate"])
    assert _json(paths.metrics) == before


def test_a_stage_alone_refuses_settings_its_inputs_were_not_made_with(tiny_run):
    config, paths = tiny_run
    other_split = dataclasses.replace(
        config, data=dataclasses.replace(config.data, split_seed=7)
    )
    with pytest.raises(ValueError, match="split_seed"):
        pipeline.run(other_split, stages=["evaluate"])


def test_too_few_examples_for_the_workers_is_a_clear_error(tiny_run):
    config, paths = tiny_run
    # A copy of the run, so the shared one keeps its checkpoints and config.
    shutil.copytree(paths.root, paths.root.with_name("tiny-greedy"))
    greedy = dataclasses.replace(
        config,
        name="tiny-greedy",
        train=dataclasses.replace(config.train, batch_size=100_000),
    )
    with pytest.raises(ValueError, match="cannot fill one batch"):
        pipeline.run(greedy, stages=["train"])
    # Refused before the earlier checkpoints were touched.
    assert list((paths.root.with_name("tiny-greedy") / "train").glob("checkpoint_2*"))
