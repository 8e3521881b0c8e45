"""Cosine neighbours of text embeddings, against distances worked by hand."""

from __future__ import annotations

import logging

import numpy as np

from recray.serving.similar import cosine_neighbours, log_similar_examples


def test_neighbours_by_cosine_distance_nearest_first():
    vectors = np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 3.0], [-1.0, 0.0], [1.0, 1.0]])
    rows, distances = cosine_neighbours(vectors, 0, 3)
    # cos to [1, 0]: [2, .1] -> 2/sqrt(4.01); [1, 1] -> 1/sqrt(2); [0, 3] -> 0.
    assert rows.tolist() == [1, 4, 2]
    np.testing.assert_allclose(
        distances, [1 - 2 / np.sqrt(4.01), 1 - 1 / np.sqrt(2), 1.0], atol=1e-6
    )
    # Never the movie itself, and no more than the others.
    assert 0 not in cosine_neighbours(vectors, 0, 10)[0]
    assert len(cosine_neighbours(vectors, 0, 10)[0]) == 4


def test_the_check_logs_a_few_movies(caplog):
    titles = ["A", "B", "C", "D"]
    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    with caplog.at_level(logging.INFO):
        log_similar_examples(titles, vectors, logging.getLogger("t"), count=2, k=1)
    assert [r.getMessage() for r in caplog.records] == [
        "Nearest by text to A: B (0.006)",
        "Nearest by text to D: C (0.006)",
    ]
