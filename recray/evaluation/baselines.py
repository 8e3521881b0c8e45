"""Baselines scored on the same validation examples as the model.

Popularity ranks movies by how often training users rated them. EASE
(Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019) is
a closed-form item-item model: with X the binary user-movie matrix of the
training users and G = X^T X, its weights are B = I - P / diag(P) with
P = (G + l2 I)^-1, and a user with past movies x scores x B. Its regulariser
`l2` is chosen on training users alone: the last movie of a held-out slice of
them is hidden and every candidate `l2` is scored on it.

Both are id-based: a movie no training user rated scores lowest, so a
cold-start movie is never retrieved by them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse

from recray.evaluation.metrics import rank_in_chunks
from recray.schema import PAD_ID

logger = logging.getLogger(__name__)

DEFAULT_EASE_L2_GRID = (100.0, 400.0, 1600.0, 6400.0)


def popularity_scores(training_targets: np.ndarray, vocab_size: int) -> np.ndarray:
    """Each movie's score is how often training users rated it, [vocab_size].

    Args:
        training_targets: Vocabulary rows of the training users' ratings.
        vocab_size: Rows of the embedding table, padding included.
    """
    return np.bincount(training_targets, minlength=vocab_size).astype(np.float64)


def interaction_matrix(
    sequences: Sequence[np.ndarray], vocab_size: int
) -> scipy.sparse.csr_matrix:
    """Binary [len(sequences), vocab_size] matrix of the rows each user rated.

    Args:
        sequences: Per user (or example), the vocabulary rows rated.
        vocab_size: Columns, the padding row included (it stays empty).
    """
    rows_of = [np.asarray(rows, dtype=np.int64) for rows in sequences]
    rows_of = [rows[rows != PAD_ID] for rows in rows_of]
    lengths = np.array([len(rows) for rows in rows_of], dtype=np.int64)
    columns = np.concatenate(rows_of) if rows_of else np.zeros(0, dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    matrix = scipy.sparse.csr_matrix(
        (np.ones(len(columns), dtype=np.float32), columns, indptr),
        shape=(len(sequences), vocab_size),
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0  # a movie rated twice is still one interaction
    return matrix


@dataclass(frozen=True)
class EaseModel:
    """EASE weights over the movies training users rated.

    Attributes:
        items: [num_items] vocabulary rows that have weights.
        weights: [num_items, num_items] float32, zero diagonal.
        l2: The regulariser it was fitted with.
        vocab_size: Rows of the vocabulary, padding included.
    """

    items: np.ndarray
    weights: np.ndarray
    l2: float
    vocab_size: int

    def scores(self, pasts: Sequence[np.ndarray]) -> np.ndarray:
        """Scores [len(pasts), vocab_size] of users with these past rows.

        Movies without weights (never rated in training) score -inf.
        """
        past = interaction_matrix(pasts, self.vocab_size)[:, self.items]
        scores = np.full((len(pasts), self.vocab_size), -np.inf)
        scores[:, self.items] = past @ self.weights
        return scores


def fit_ease(
    matrix: scipy.sparse.spmatrix, l2: float, items: np.ndarray | None = None
) -> EaseModel:
    """The closed-form EASE weights of a binary user-movie matrix.

    Args:
        matrix: [num_users, vocab_size] binary interactions.
        l2: Ridge regulariser added to the Gram matrix's diagonal.
        items: Rows to fit; by default those with at least one interaction.

    Returns:
        The fitted model.
    """
    matrix = scipy.sparse.csc_matrix(matrix)
    if items is None:
        items = np.flatnonzero(np.diff(matrix.indptr) > 0)
    sub = matrix[:, items]
    gram = (sub.T @ sub).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += l2
    precision = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
    weights = precision / (-np.diag(precision))[np.newaxis, :]
    weights[np.diag_indices_from(weights)] = 0.0
    return EaseModel(
        np.asarray(items), weights.astype(np.float32), float(l2), matrix.shape[1]
    )


def choose_ease(
    sequences: Sequence[np.ndarray],
    vocab_size: int,
    grid: Sequence[float] = DEFAULT_EASE_L2_GRID,
    held_out_fraction: float = 0.2,
    hidden_per_user: int = 10,
    k: int = 100,
    seed: int = 0,
) -> tuple[EaseModel, dict[float, float]]:
    """Choose EASE's `l2` on training users, then fit it on all of them.

    A seeded `held_out_fraction` of the users (with two or more movies) is
    held out; their last `hidden_per_user` movies are hidden, EASE is fitted
    on the other users plus the held-out users' earlier movies, and HR@k of
    the hidden movies, each ranked among the movies not yet rated, scores
    each `l2` of `grid`.

    Args:
        sequences: Per training user, vocabulary rows in time order.
        vocab_size: Rows of the vocabulary, padding included.
        grid: Candidate regularisers.
        held_out_fraction: Share of users whose last movies are hidden.
        hidden_per_user: Movies hidden per held-out user.
        k: Cut-off of the hit rate that picks `l2`.
        seed: Picks the held-out users.

    Returns:
        The model fitted on every training user with the best `l2`, and the
        hit rate of each `l2`.

    Raises:
        ValueError: `grid` is empty or no user has two movies.
    """
    if not grid:
        raise ValueError("The EASE `l2` grid is empty; give at least one value.")
    eligible = np.flatnonzero([len(rows) >= 2 for rows in sequences])
    if eligible.size == 0:
        raise ValueError("EASE needs training users with two or more movies.")
    rng = np.random.default_rng(seed)
    num_held = max(1, int(round(held_out_fraction * eligible.size)))
    held = set(rng.choice(eligible, num_held, replace=False).tolist())
    fit_sequences, pasts, targets = [], [], []
    for index, rows in enumerate(sequences):
        if index in held:
            # The last movies (up to `hidden_per_user`, never the first) are
            # hidden; each is one target scored from the movies before them.
            hidden = min(hidden_per_user, len(rows) - 1)
            fit_sequences.append(rows[:-hidden])
            pasts.extend([rows[:-hidden]] * hidden)
            targets.extend(rows[-hidden:])
        else:
            fit_sequences.append(rows)
    matrix = interaction_matrix(fit_sequences, vocab_size)
    targets = np.asarray(targets, dtype=np.int64)
    hit_rates: dict[float, float] = {}
    for l2 in grid:
        model = fit_ease(matrix, l2)
        ranks = rank_in_chunks(
            lambda chunk, model=model: model.scores(pasts[chunk]), targets, pasts
        )
        hit_rates[float(l2)] = float(np.mean(ranks < k))
        logger.info(
            "EASE l2=%g: HR@%d %.4f on held-out training users",
            l2,
            k,
            hit_rates[float(l2)],
        )
    best = max(hit_rates, key=hit_rates.get)
    return fit_ease(interaction_matrix(sequences, vocab_size), best), hit_rates
