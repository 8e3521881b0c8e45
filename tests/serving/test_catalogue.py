"""The serving catalogue's movie rows and its errors on stale run files."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recray.config import PipelineConfig, save_yaml
from recray.data.movie_features import GENRES, YEAR_CENTRES
from recray.data.texts import MOVIE_TEXTS_SCHEMA
from recray.schema import PAD_ID
from recray.serving.catalogue import ServingPaths, load_catalogue

DIM = 4


def _run(tmp_path, width: int = DIM + len(YEAR_CENTRES) + len(GENRES)):
    """A trained run's catalogue files for two movies."""
    save_yaml(PipelineConfig(name="run", runs_dir=tmp_path), tmp_path / "config.yaml")
    texts = pa.table(
        {
            "movie_id": [1, 2],
            "title": ["Heat (1995)", "Untitled"],
            "text": ["Heat (1995).", "Untitled."],
            "year": [1995, None],
            "genres": [["Crime"], []],
        },
        schema=MOVIE_TEXTS_SCHEMA,
    )
    pq.write_table(texts, tmp_path / "movie_texts.parquet")
    vectors = np.random.default_rng(0).normal(size=(2, DIM)).astype(np.float32)
    np.savez(tmp_path / "movie_embeddings.npz", movie_id=[1, 2], vectors=vectors)
    features = {
        "year_features": True,
        "genre_features": True,
        "last_year": 2012,
        "width": width,
    }
    (tmp_path / "movie_features.json").write_text(json.dumps(features))
    return ServingPaths(tmp_path), vectors


def test_rows_are_the_text_then_year_and_genres(tmp_path):
    paths, vectors = _run(tmp_path)
    rows = load_catalogue(paths).inputs

    assert rows.shape == (2, DIM + len(YEAR_CENTRES) + len(GENRES))
    np.testing.assert_allclose(rows[:, :DIM], vectors)
    assert rows[0, DIM:].any()  # a year and a genre
    assert not rows[1, DIM:].any()  # neither


def test_added_movies_have_no_vocabulary_row(tmp_path):
    paths, vectors = _run(tmp_path)
    catalogue = load_catalogue(paths)
    new = pa.table(
        {
            "movie_id": [7],
            "title": ["New (2030)"],
            "text": ["New (2030)."],
            "year": [2030],
            "genres": [["Drama"]],
        },
        schema=MOVIE_TEXTS_SCHEMA,
    )
    extended = catalogue.extended(new, vectors[:1])
    # Movie ids 1 and 2 are rows 1 and 2; the added movie gets the padding
    # row, whose learned bias is 0.
    np.testing.assert_array_equal(extended.rows, [1, 2, PAD_ID])


def test_rows_wider_than_the_trained_towers_are_a_clear_error(tmp_path):
    paths, _ = _run(tmp_path, width=DIM + 1)
    with pytest.raises(ValueError, match="Restore the run's embedder settings"):
        _ = load_catalogue(paths).inputs


def test_added_movies_without_year_and_genres_are_a_clear_error(tmp_path):
    paths, _ = _run(tmp_path)
    old = pa.table({"movie_id": [3], "title": ["New (2020)"], "text": ["New."]})
    pq.write_table(old, paths.added_movies)
    np.savez(paths.added_embeddings, movie_id=[3], vectors=np.zeros((1, DIM)))

    with pytest.raises(ValueError, match="run `recray add-movies` again"):
        load_catalogue(paths)
