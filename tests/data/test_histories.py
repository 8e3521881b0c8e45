"""Next-movie examples and the user split, checked by hand."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recray.data.histories import is_validation_user, rated_before, user_examples
from recray.data.vocabulary import MovieVocabulary
from recray.schema import PAD_ID

VOCABULARY = MovieVocabulary(np.array([10, 20, 30, 40, 50]))


def _ratings(movies, stars, times, user=7):
    return {
        "user_id": np.full(len(movies), user, dtype=np.int64),
        "movie_id": np.array(movies, dtype=np.int64),
        "rating": np.array(stars, dtype=np.float32),
        "timestamp": np.array(times, dtype=np.int64),
    }


def test_vocabulary_rows_and_unknown_movies():
    rows = VOCABULARY.rows(np.array([10, 50, 35, 99, 1]))
    np.testing.assert_array_equal(rows, [1, 5, PAD_ID, PAD_ID, PAD_ID])
    assert VOCABULARY.size == 6


def test_examples_are_chronological_padded_and_centred_on_the_past():
    # Given out of order; movie 20 and 40 share a timestamp (tie: lower id first).
    ratings = _ratings(
        movies=[30, 40, 10, 20], stars=[2.0, 5.0, 4.0, 3.0], times=[300, 200, 100, 200]
    )

    examples = user_examples(ratings, VOCABULARY, max_history=2)

    # Time order: 10 (4.0), 20 (3.0), 40 (5.0), 30 (2.0) -> rows 1, 2, 4, 3.
    np.testing.assert_array_equal(examples["target_id"], [2, 4, 3])
    np.testing.assert_array_equal(examples["position"], [1, 2, 3])
    np.testing.assert_array_equal(
        examples["history_ids"], [[1, PAD_ID], [1, 2], [2, 4]]
    )
    # Centred on the mean of all ratings before the target:
    # target 2: mean(4) = 4 -> [0]; target 4: mean(4, 3) = 3.5 -> [0.5, -0.5];
    # target 3: mean(4, 3, 5) = 4 -> the last two, 3 and 5 -> [-1, 1].
    np.testing.assert_allclose(
        examples["history_ratings"], [[0.0, 0.0], [0.5, -0.5], [-1.0, 1.0]]
    )
    np.testing.assert_array_equal(examples["user_id"], [7, 7, 7])


def test_a_single_rating_gives_no_example():
    examples = user_examples(_ratings([10], [4.0], [1]), VOCABULARY, max_history=3)
    assert len(examples["target_id"]) == 0
    assert examples["history_ids"].shape == (0, 3)


def test_user_split_is_seeded_and_independent_of_order():
    users = np.arange(1, 20_001)
    held_out = is_validation_user(users, seed=42, fraction=0.2)
    shuffled = np.random.default_rng(0).permutation(users)

    again = is_validation_user(shuffled, seed=42, fraction=0.2)
    other_seed = is_validation_user(users, seed=43, fraction=0.2)

    assert held_out.mean() == pytest.approx(0.2, abs=0.01)
    np.testing.assert_array_equal(again, held_out[shuffled - 1])
    assert (held_out != other_seed).mean() > 0.2


def test_split_fraction_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match="validation_fraction"):
        is_validation_user(np.arange(5), seed=1, fraction=1.5)


def test_rated_before_is_the_whole_past_not_just_the_window():
    ratings = pa.table(
        {
            "user_id": pa.array([7, 7, 7, 7, 8], pa.int64()),
            "movie_id": pa.array([30, 40, 10, 20, 50], pa.int64()),
            "rating": pa.array([2.0, 5.0, 4.0, 3.0, 1.0], pa.float32()),
            "timestamp": pa.array([300, 200, 100, 200, 5], pa.int64()),
        }
    )
    examples = {"user_id": np.array([7, 7]), "position": np.array([3, 1])}

    excluded = rated_before(ratings, VOCABULARY, examples)

    np.testing.assert_array_equal(excluded[0], [1, 2, 4])
    np.testing.assert_array_equal(excluded[1], [1])
