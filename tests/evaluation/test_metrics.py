"""Ranking metrics against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from recray.evaluation.baselines import popularity_scores
from recray.evaluation.metrics import (
    hit_rate,
    ndcg,
    rank_in_chunks,
    ranking_metrics,
    seeded_sample,
    target_ranks,
)


def test_ranks_exclude_rated_movies_and_the_padding_row():
    # Column 0 is padding and must never count, however high its score.
    scores = np.array(
        [
            [9.0, 0.1, 0.9, 0.5, 0.7],
            [9.0, 0.1, 0.9, 0.5, 0.7],
        ]
    )
    targets = np.array([3, 3])
    excluded = [np.array([], dtype=int), np.array([2, 4])]

    ranks = target_ranks(scores, targets, excluded)

    # Row 0: movies 2 (0.9) and 4 (0.7) beat movie 3 (0.5): rank 2.
    # Row 1: both were rated before, so movie 3 comes first.
    np.testing.assert_array_equal(ranks, [2, 0])


def test_ties_do_not_flatter_a_constant_scorer():
    scores = np.ones((2, 5))
    ranks = target_ranks(scores, np.array([1, 4]), [np.array([], int)] * 2)
    # Ties go to the lower row: movie 1 is first, movie 4 is behind 1, 2, 3.
    np.testing.assert_array_equal(ranks, [0, 3])


def test_hit_rate_and_ndcg_by_hand():
    ranks = np.array([0, 1, 9, 10, 150])
    assert hit_rate(ranks, 10) == pytest.approx(3 / 5)
    assert hit_rate(ranks, 100) == pytest.approx(4 / 5)
    # 1/log2(2) + 1/log2(3) + 1/log2(11) = 1 + 0.63093 + 0.28906
    assert ndcg(ranks, 10) == pytest.approx((1 + 0.63093 + 0.28906) / 5, abs=1e-5)

    metrics = ranking_metrics(ranks, (10, 100))
    assert set(metrics) == {"hr@10", "hr@100", "ndcg@10", "examples"}
    assert metrics["examples"] == 5


def test_chunked_ranking_equals_one_pass():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(37, 20))
    targets = rng.integers(1, 20, size=37)
    excluded = [rng.choice(np.arange(1, 20), size=3, replace=False) for _ in targets]
    excluded = [
        rated[rated != target] for rated, target in zip(excluded, targets, strict=True)
    ]

    whole = target_ranks(scores, targets, excluded)
    chunked = rank_in_chunks(lambda rows: scores[rows], targets, excluded, chunk_size=8)

    np.testing.assert_array_equal(whole, chunked)


def test_popularity_counts_training_ratings():
    scores = popularity_scores(np.array([1, 1, 3, 1, 2]), vocab_size=5)
    np.testing.assert_array_equal(scores, [0, 3, 1, 1, 0])


def test_seeded_sample_keeps_rows_together_in_order_and_repeats_with_its_seed():
    examples = {"target": np.arange(100), "history": np.arange(100) * 10}
    sample = seeded_sample(examples, 7, seed=3)
    assert len(sample["target"]) == 7
    assert np.all(np.diff(sample["target"]) > 0)  # original order, no repeats
    np.testing.assert_array_equal(sample["history"], sample["target"] * 10)
    again = seeded_sample(examples, 7, seed=3)
    np.testing.assert_array_equal(again["target"], sample["target"])
    other = seeded_sample(examples, 7, seed=4)
    assert not np.array_equal(other["target"], sample["target"])
    assert seeded_sample(examples, None, seed=3) is examples
    assert seeded_sample(examples, 100, seed=3) is examples
