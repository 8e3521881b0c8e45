"""`recray data synth`: a tiny synthetic ml-25m, read back by the real reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from recray.commands import main as recray_main
from recray.data import DataReport, build_movie_texts, load_movielens
from recray.data.synth import (
    FIRST_TIMESTAMP,
    LAST_TIMESTAMP,
    MIN_RATINGS_PER_USER,
    SynthSpec,
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("synth") / "synthetic-ml-25m"
    assert recray_main(["data", "synth", "--out", str(folder), "--scale", "0.002"]) == 0
    return folder


def test_scaled_counts_follow_ml25m() -> None:
    full = SynthSpec.scaled(1.0)
    assert (full.users, full.movies, full.ratings) == (162_541, 62_423, 25_000_095)
    with pytest.raises(ValueError, match="`scale` must be in"):
        SynthSpec.scaled(2.0)


def test_synthetic_folder_reads_clean_with_the_exact_counts(synthetic: Path) -> None:
    spec = SynthSpec.scaled(0.002)
    report = DataReport()

    data = load_movielens(synthetic, report)

    assert report.total_dropped() == 0
    assert data.ratings.num_rows == spec.ratings
    assert pc.count_distinct(data.ratings["user_id"]).as_py() == spec.users
    assert data.movies.num_rows == spec.movies
    timestamps = data.ratings["timestamp"].to_numpy()
    assert FIRST_TIMESTAMP <= timestamps.min() and timestamps.max() <= LAST_TIMESTAMP
    stars = np.unique(data.ratings["rating"].to_numpy())
    assert set(stars) <= set(np.arange(1, 11) / 2)


def test_activity_and_popularity_are_heavy_tailed(synthetic: Path) -> None:
    data = load_movielens(synthetic, DataReport())
    _, per_user = np.unique(data.ratings["user_id"].to_numpy(), return_counts=True)
    _, per_movie = np.unique(data.ratings["movie_id"].to_numpy(), return_counts=True)

    assert per_user.min() >= MIN_RATINGS_PER_USER
    # Heavy tails: the mean well above the median, the top far above both.
    assert per_user.mean() > 1.4 * np.median(per_user)
    assert per_user.max() > 5 * np.median(per_user)
    top_share = (
        np.sort(per_movie)[::-1][: len(per_movie) // 100].sum() / per_movie.sum()
    )
    assert top_share > 0.05  # the top 1% of movies: over 5 times a fair share


def test_labelled_synthetic_in_readme_marker_report_and_texts(synthetic: Path) -> None:
    assert (synthetic / "README.txt").read_text().startswith("SYNTHETIC DATA")
    assert json.loads((synthetic / "SYNTHETIC").read_text())["synthetic"] is True
    report = DataReport()
    data = load_movielens(synthetic, report)
    assert report.to_dict()["dataset"]["synthetic"] is True
    assert "SYNTHETIC" in report.dataset["layout"]

    texts = build_movie_texts(data, None, top_tags=3)

    assert texts.num_rows == data.movies.num_rows  # a text for every movie
    for text in texts["text"].to_pylist():
        assert text.startswith("Synthetic movie ")
        assert "synthetic data" in text


def test_same_seed_same_data(tmp_path: Path, synthetic: Path) -> None:
    again = tmp_path / "again"
    assert recray_main(["data", "synth", "--out", str(again), "--scale", "0.002"]) == 0
    for name in ("ratings.csv", "movies.csv", "tags.csv"):
        assert (again / name).read_bytes() == (synthetic / name).read_bytes()
