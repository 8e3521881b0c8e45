"""Year and genre features of the towers' movie table."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from recray.data import DataReport, build_movie_texts, load_movielens
from recray.data.movie_features import (
    GENRE_SCALE,
    GENRES,
    YEAR_CENTRES,
    FeatureSpec,
    genre_flags,
    last_training_year,
    tower_inputs,
    unknown_genres,
    warn_of_unknown_genres,
    year_encoding,
)


def _column(year: float) -> int:
    return int(np.flatnonzero(YEAR_CENTRES == year)[0])


def test_year_bumps_by_hand():
    encoded = year_encoding(np.array([1995, 1997, 0]), last_year=2012)

    # 1995 sits on a centre; its neighbours 5 years away get exp(-1).
    assert encoded[0, _column(1995)] == pytest.approx(1.0)
    assert encoded[0, _column(1990)] == pytest.approx(np.exp(-1.0))
    assert encoded[0, _column(2000)] == pytest.approx(np.exp(-1.0))
    # 1997 is 2 years from 1995 and 3 from 2000.
    assert encoded[1, _column(1995)] == pytest.approx(np.exp(-0.16))
    assert encoded[1, _column(2000)] == pytest.approx(np.exp(-0.36))
    # An unknown year is no year at all.
    assert not encoded[2].any()


def test_years_after_the_last_training_year_read_as_it():
    encoded = year_encoding(np.array([2012, 2016, 2030]), last_year=2012)
    np.testing.assert_array_equal(encoded[1], encoded[0])
    np.testing.assert_array_equal(encoded[2], encoded[0])


def test_genre_flags_fold_case_and_the_ml_100k_spelling():
    flags = genre_flags([["Comedy", "Children's"], ["SCI-FI"], []])

    expected = np.zeros((3, len(GENRES)), np.float32)
    expected[0, GENRES.index("comedy")] = GENRE_SCALE
    expected[0, GENRES.index("children")] = GENRE_SCALE
    expected[1, GENRES.index("sci-fi")] = GENRE_SCALE
    np.testing.assert_array_equal(flags, expected)


def test_a_genre_outside_the_list_is_left_out_and_reported(caplog):
    genres = [["Drama", "Space Opera"], ["Space Opera"]]
    flags = genre_flags(genres)
    with caplog.at_level(logging.WARNING, logger="recray.data.movie_features"):
        warn_of_unknown_genres(genres)

    assert flags[0].sum() == pytest.approx(GENRE_SCALE)
    assert not flags[1].any()
    assert unknown_genres(genres) == {"Space Opera": 2}
    assert "`Space Opera` (2 movies)" in caplog.text


def test_every_genre_of_ml_latest_small_has_a_flag(movielens_small):
    movies = load_movielens(movielens_small, DataReport()).movies
    genres = movies["genres"].to_pylist()

    assert unknown_genres(genres) == {}
    # Only "(no genres listed)" movies, which MovieLens leaves blank, lack one.
    blank = np.array([not names for names in genres])
    np.testing.assert_array_equal(genre_flags(genres).any(axis=1), ~blank)


def test_last_training_year_is_the_latest_rated_movie():
    years = np.array([1990, 2012, 2015, 0])
    counts = np.array([3, 1, 0, 7])
    assert last_training_year(years, counts) == 2012


def test_no_rated_movie_with_a_year_is_a_clear_error():
    with pytest.raises(ValueError, match="--year-features False"):
        last_training_year(np.array([0, 2015]), np.array([4, 0]))


def test_year_features_need_the_clip_year():
    with pytest.raises(ValueError, match="last_year"):
        FeatureSpec(year_features=True, genre_features=False)


def test_tower_inputs_append_what_the_spec_asks_for(movielens_small):
    data = load_movielens(movielens_small, DataReport())
    texts = build_movie_texts(data, None, top_tags=0)
    years = texts["year"].fill_null(0).to_numpy()
    genres = texts["genres"].to_pylist()
    text = np.random.default_rng(0).normal(size=(texts.num_rows, 4))

    spec = FeatureSpec(year_features=True, genre_features=True, last_year=2012)
    everything = tower_inputs(text, years, genres, spec)
    text_only = tower_inputs(text, years, genres, FeatureSpec(False, False))

    assert everything.shape == (texts.num_rows, 4 + len(YEAR_CENTRES) + len(GENRES))
    np.testing.assert_allclose(everything[:, :4], text, rtol=1e-6)
    np.testing.assert_allclose(text_only, text, rtol=1e-6)
    toy_story = texts["title"].to_pylist().index("Toy Story (1995)")
    year_part = everything[toy_story, 4 : 4 + len(YEAR_CENTRES)]
    assert year_part[_column(1995)] == pytest.approx(1.0)
    genre_part = everything[toy_story, 4 + len(YEAR_CENTRES) :]
    assert genre_part[GENRES.index("animation")] == pytest.approx(GENRE_SCALE)
