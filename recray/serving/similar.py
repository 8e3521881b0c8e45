"""Closest movies by cosine distance between text embeddings (numpy only).

The quick check that the embeddings carry meaning: the neighbours of "Toy
Story (1995)" should be other animated family films. The embedding stage logs
it for a few movies; `recray similar` answers it for any title.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np


def cosine_neighbours(
    vectors: np.ndarray, row: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` rows closest to `row` by cosine distance, nearest first.

    Args:
        vectors: [num_movies, dim] text embeddings.
        row: The movie to start from; it is left out of the answer.
        k: Number of neighbours (fewer when the catalogue is smaller).

    Returns:
        Rows [k] and their cosine distances [k] (1 - cosine similarity).
    """
    norms = np.linalg.norm(vectors, axis=1)
    similarity = vectors @ vectors[row] / np.maximum(norms * norms[row], 1e-12)
    distance = 1.0 - similarity  # [num_movies]
    distance[row] = np.inf
    k = min(k, len(vectors) - 1)
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    nearest = np.argpartition(distance, k - 1)[:k]
    nearest = nearest[np.argsort(distance[nearest], kind="stable")]
    return nearest, distance[nearest].astype(np.float32)


def log_similar_examples(
    titles: Sequence[str],
    vectors: np.ndarray,
    logger: logging.Logger,
    count: int = 3,
    k: int = 5,
) -> None:
    """Log the `k` nearest titles of `count` movies spread over the catalogue.

    Args:
        titles: Title of each row of `vectors`.
        vectors: [num_movies, dim] text embeddings.
        logger: Logger of the caller, so the lines carry its name.
        count: Movies to log.
        k: Neighbours per movie.
    """
    if len(titles) < 2 or count <= 0:
        return
    rows = np.unique(np.linspace(0, len(titles) - 1, num=count).astype(int))
    for row in rows:
        nearest, distances = cosine_neighbours(vectors, int(row), k)
        listed = "; ".join(
            f"{titles[n]} ({d:.3f})" for n, d in zip(nearest, distances, strict=True)
        )
        logger.info("Nearest by text to %s: %s", titles[row], listed)
