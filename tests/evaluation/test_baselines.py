"""EASE and popularity, on small matrices worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from recray.evaluation.baselines import (
    choose_ease,
    fit_ease,
    interaction_matrix,
    popularity_scores,
)


def test_interaction_matrix_is_binary_and_ignores_padding():
    matrix = interaction_matrix([np.array([1, 1, 3]), np.array([0, 2])], 5).toarray()
    np.testing.assert_array_equal(matrix, [[0, 1, 0, 1, 0], [0, 0, 1, 0, 0]])


def test_ease_matches_the_closed_form():
    rng = np.random.default_rng(0)
    dense = (rng.random((40, 7)) < 0.4).astype(np.float64)
    dense[:, 0] = 0.0  # the padding column
    sequences = [np.flatnonzero(row) for row in dense]
    model = fit_ease(interaction_matrix(sequences, 7), l2=3.0)

    items = np.flatnonzero(dense.sum(axis=0) > 0)
    x = dense[:, items]
    precision = np.linalg.inv(x.T @ x + 3.0 * np.eye(len(items)))
    expected = np.eye(len(items)) - precision / np.diag(precision)
    np.testing.assert_array_equal(model.items, items)
    np.testing.assert_allclose(model.weights, expected, atol=1e-5)
    assert np.all(np.diag(model.weights) == 0.0)


def test_ease_recommends_the_partner_movie_and_never_an_unrated_one():
    # Movies come in pairs (1, 2), (3, 4), (5, 6); movie 7 nobody rated.
    pairs = [np.array([1, 2]), np.array([3, 4]), np.array([5, 6])]
    sequences = [pairs[user % 3] for user in range(30)]
    model = fit_ease(interaction_matrix(sequences, 8), l2=1.0)
    scores = model.scores([np.array([3]), np.array([6])])

    assert np.argmax(scores[0]) == 4
    assert np.argmax(scores[1]) == 5
    assert np.all(np.isneginf(scores[:, [0, 7]]))


def test_choose_ease_scores_every_l2_on_held_out_training_users():
    rng = np.random.default_rng(1)
    # Each user watches a block of 3 related movies, the last one hidden.
    sequences = []
    for _ in range(60):
        block = 1 + 3 * rng.integers(0, 4)
        sequences.append(rng.permutation(np.arange(block, block + 3)))
    model, hit_rates = choose_ease(sequences, 13, grid=(0.5, 5.0), k=2, seed=0)

    assert set(hit_rates) == {0.5, 5.0}
    assert model.l2 == max(hit_rates, key=hit_rates.get)
    assert max(hit_rates.values()) == 1.0  # the partners are always top 2
    with pytest.raises(ValueError, match="grid is empty"):
        choose_ease(sequences, 13, grid=())


def test_popularity_counts_each_rating():
    np.testing.assert_array_equal(
        popularity_scores(np.array([1, 1, 3]), 5), [0, 2, 0, 1, 0]
    )
