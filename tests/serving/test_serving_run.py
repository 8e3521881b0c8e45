"""Serving a real tiny trained run: export, recommend, similar, add-movies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recray import pipeline
from recray.commands import main as recray_main
from recray.config import (
    DataConfig,
    EmbeddingConfig,
    ModelConfig,
    PipelineConfig,
    TrainConfig,
)

pytestmark = pytest.mark.slow

# A movie of ml-latest-small that the tiny data leaves out, and its sequels in.
NEW_MOVIE_ID = 52722  # Spider-Man 3 (2007); Spider-Man 1 and 2 are in the run


@pytest.fixture(scope="module")
def run_dir(ray_cluster, tiny_movielens, tmdb_5000, tmp_path_factory) -> Path:
    """Train a tiny run once for this module (no evaluate stage): the first 60
    users' latest 8 ratings, 428 movies."""
    root = tmp_path_factory.mktemp("serve-runs")
    config = PipelineConfig(
        name="tiny",
        runs_dir=root,
        data=DataConfig(data_dir=tiny_movielens, tmdb_path=tmdb_5000, max_history=5),
        embedding=EmbeddingConfig(cache_dir=root / "cache"),
        # Towers of the default width, and epochs enough for a history of
        # Spider-Man films to point at Spider-Man 3 (rank 2 of 428 when
        # measured; 3 epochs of 8-dim towers left it at rank 90). The loss
        # and attention are the ones it was measured with, pinned so that a
        # change of defaults does not move this tiny run's calibration; its
        # histories of 5 movies get no recency vectors, and the movie rows
        # keep the default year and genre features, which serving must
        # build for an added movie. The added movie is this run's
        # cold-start movie: no split by year, and no ID baseline, which
        # serving never reads.
        model=ModelConfig(
            num_heads=2,
            key_dim=8,
            temperature=0.05,
            attention_residual=False,
            recency_positions=0,
        ),
        train=TrainConfig(
            num_workers=1,
            batch_size=16,
            epochs=10,
            learning_rate=3e-3,
            cold_start_fraction=0.0,
            id_baseline=False,
        ),
    )
    paths = pipeline.run(config, stages=pipeline.STAGES[:4])
    return paths.root


def _fresh_process(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _cli(*argv: str) -> subprocess.CompletedProcess:
    code = "import sys; from recray.commands import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300
    )


def test_index_loads_in_a_fresh_process_with_ids_and_titles(run_dir):
    movies = pq.read_table(run_dir / "index" / "movies.parquet").to_pandas()
    texts = pq.read_table(run_dir / "movie_texts.parquet").to_pandas()
    assert movies.movie_id.tolist() == texts.movie_id.tolist()
    assert movies.title.tolist() == texts.title.tolist()
    assert not movies.added.any()

    # TensorFlow alone: query with the candidate embedding of row 3.
    script = f"""
import json, numpy as np, tensorflow as tf
index = tf.saved_model.load({str(run_dir / "index" / "saved_model")!r})
candidates = np.load({str(run_dir / "index" / "candidate_embeddings.npy")!r})
out = index.signatures["serving_default"](
    query_embedding=tf.constant(candidates[3:4]), k=tf.constant(5))
print(json.dumps([out["movie_ids"].numpy()[0].tolist(),
                  out["scores"].numpy()[0].tolist()]))
"""
    ids, scores = json.loads(_fresh_process(script).strip().splitlines()[-1])
    candidates = np.load(run_dir / "index" / "candidate_embeddings.npy")
    expected = np.argsort(-(candidates @ candidates[3]), kind="stable")[:5]
    assert ids == movies.movie_id.to_numpy()[expected].tolist()
    assert ids[0] == movies.movie_id[3]
    np.testing.assert_allclose(
        scores, (candidates @ candidates[3])[expected], atol=1e-5
    )


def test_exported_towers_match_the_trained_ones(run_dir):
    from recray.model.export import ExportedCandidateModel, ExportedQueryModel
    from recray.serving.catalogue import ServingPaths, load_catalogue

    catalogue = load_catalogue(ServingPaths(run_dir))
    # The train stage's candidate embeddings come from the Keras tower on ids.
    trained = np.load(run_dir / "candidate_embeddings.npy")[1:]
    exported = ExportedCandidateModel(run_dir / "candidate_model")(
        catalogue.inputs, catalogue.rows
    )
    np.testing.assert_allclose(exported, trained, atol=1e-5)

    query_model = ExportedQueryModel(run_dir / "query_model")
    rng = np.random.default_rng(1)
    ids = rng.integers(1, len(catalogue) + 1, size=(6, 5)).astype(np.int32)
    ids[0, 2:] = 0
    ratings = rng.normal(size=ids.shape).astype(np.float32)
    table = np.concatenate([np.zeros((1, catalogue.width)), catalogue.inputs])
    by_vectors = query_model.from_vectors(table[ids], ids != 0, ratings)
    np.testing.assert_allclose(by_vectors, query_model(ids, ratings), atol=1e-5)


def test_recommend_cli_prints_titles_and_scores(run_dir):
    from recray.serving.recommend import Recommender

    recommender = Recommender(run_dir)
    titles = recommender.catalogue.titles
    spider_man = next(t for t in titles if t.startswith("Spider-Man (2002)"))
    shrek = "Shrek (2001)"
    typed = f"spider-man:5, {shrek.upper()}:3"

    done = _cli("recommend", "--run", str(run_dir), "--history", typed, "-k", "7")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].split() == ["movie", "score"]
    printed = [line.rsplit(maxsplit=1) for line in lines[1:]]
    assert len(printed) == 7
    shown = [title.strip() for title, _ in printed]
    scores = [float(score) for _, score in printed]
    assert set(shown) <= set(titles) and not {spider_man, shrek} & set(shown)
    assert scores == sorted(scores, reverse=True)

    # The same answer from numpy: centred ratings, query, candidates, top 7.
    rows = [titles.index(spider_man), titles.index(shrek)]
    query = recommender.query_model.from_vectors(
        recommender.catalogue.inputs[rows][None],
        np.ones((1, 2), bool),
        np.array([[1.0, -1.0]], np.float32),  # 5 and 3 around their mean of 4
    )[0]
    candidates = np.load(run_dir / "index" / "candidate_embeddings.npy")
    order = [
        r for r in np.argsort(-(candidates @ query), kind="stable") if r not in rows
    ]
    assert shown == [titles[r] for r in order[:7]]
    np.testing.assert_allclose(scores, (candidates @ query)[order[:7]], atol=1e-4)


def test_recommend_unknown_title_lists_the_closest(run_dir):
    done = _cli("recommend", "--run", str(run_dir), "--history", "Shrak (2001):4")
    assert done.returncode == 2
    assert "No movie titled `Shrak (2001)`" in done.stderr
    assert "`Shrek (2001)`" in done.stderr


def test_similar_lists_nearest_by_cosine_distance(run_dir, capsys):
    assert recray_main(["similar", "--run", str(run_dir), "shrek", "-k", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "Nearest to Shrek (2001):"
    printed = [line.rsplit(maxsplit=1) for line in lines[2:]]

    with np.load(run_dir / "movie_embeddings.npz") as saved:
        vectors = saved["vectors"]
    titles = pq.read_table(run_dir / "movie_texts.parquet")["title"].to_pylist()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    distance = 1.0 - unit @ unit[titles.index("Shrek (2001)")]
    expected = np.argsort(distance, kind="stable")[1:5]
    assert [t.strip() for t, _ in printed] == [titles[r] for r in expected]
    np.testing.assert_allclose(
        [float(d) for _, d in printed], distance[expected], atol=1e-4
    )
    assert "Shrek 2 (2004)" in [t.strip() for t, _ in printed]


def _new_movie_record(movielens_small: Path, tmdb_5000: Path) -> dict:
    """Spider-Man 3 as a person would describe it, from the real files."""
    from recray.data import DataReport, load_tmdb

    movies = pd.read_csv(movielens_small / "movies.csv").set_index("movieId")
    links = pd.read_csv(movielens_small / "links.csv").set_index("movieId")
    tmdb = load_tmdb(tmdb_5000, DataReport()).to_pandas().set_index("tmdb_id")
    entry = tmdb.loc[int(links.tmdbId[NEW_MOVIE_ID])]
    return {
        "title": movies.title[NEW_MOVIE_ID],
        "genres": movies.genres[NEW_MOVIE_ID].split("|"),
        "tagline": entry.tagline,
        "overview": entry.overview,
        "keywords": list(entry.keywords),
    }


def test_added_movie_is_recommended_for_its_nearest_neighbours(
    run_dir, movielens_small, tmdb_5000, tmp_path, capsys
):
    from recray.serving.recommend import Recommender
    from recray.serving.similar import cosine_neighbours
    from recray.serving.titles import HistoryItem

    record = _new_movie_record(movielens_small, tmdb_5000)
    before = Recommender(run_dir)
    assert record["title"] not in before.catalogue.titles

    path = tmp_path / "new.json"
    path.write_text(json.dumps([record]))
    assert recray_main(["add-movies", "--run", str(run_dir), str(path)]) == 0
    assert record["title"] in capsys.readouterr().out

    after = Recommender(run_dir)
    assert len(after.catalogue) == len(before.catalogue) + 1
    new_row = after.catalogue.titles.index(record["title"])
    assert after.catalogue.added[new_row]
    # The towers read its year and genres too, as they read a trained movie's.
    assert after.catalogue.years[new_row] == 2007
    assert after.catalogue.genres[new_row] == record["genres"]
    width = before.catalogue.width
    assert after.catalogue.inputs.shape == (len(after.catalogue), width)
    info = json.loads((run_dir / "index" / "index.json").read_text())
    assert info["movies"] == len(after.catalogue) and info["added_movies"] == 1
    # Training never scored it, so it has no learned bias; the trained
    # movies keep theirs.
    indexed = np.load(run_dir / "index" / "candidate_embeddings.npy")
    trained = np.load(run_dir / "candidate_embeddings.npy")[1:]
    assert indexed[new_row, -1] == 0.0
    np.testing.assert_allclose(indexed[~after.catalogue.added], trained, atol=1e-5)
    assert np.abs(trained[:, -1]).max() > 0.0

    # A history of its five nearest movies by text, each rated 5.
    neighbours, _ = cosine_neighbours(after.catalogue.vectors, new_row, 5)
    history = [HistoryItem(after.catalogue.titles[r], 5.0) for r in neighbours]
    found = [item.title for item in after.recommend(history, k=10)]
    assert record["title"] in found
    # Before it was added it could not be: the index did not hold it.
    assert record["title"] not in [i.title for i in before.recommend(history, 10)]

    # Adding it again is refused, naming the movie.
    assert recray_main(["add-movies", "--run", str(run_dir), str(path)]) == 2
    assert "already in the run" in capsys.readouterr().err
