"""The "new movies" split: the latest movies are kept out of training entirely.

Movies of the most recent title years, by default the latest years that hold
about 5% of all ratings, are cold: no training example has one as its
target, every training history reads them as padding, and they are no
negative of the catalogue softmax. Validation examples whose target is cold
are scored apart, which shows whether the text towers retrieve movies that
training never saw. Id-based baselines know nothing of a cold movie.

The split works on vocabulary rows and example columns, so it applies to the
examples the histories stage wrote, whatever wrote them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from recray.schema import HISTORY_IDS, HISTORY_RATINGS, PAD_ID, TARGET_ID

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ColdStartSplit:
    """Which vocabulary rows are cold movies.

    Attributes:
        is_cold: [vocab_size] bool; row `PAD_ID` is never cold.
        first_year: Titles of this year and later are cold; 0 when none is.
        rating_share: Share of all ratings that are of cold movies.
    """

    is_cold: np.ndarray
    first_year: int
    rating_share: float

    @property
    def num_cold(self) -> int:
        return int(self.is_cold.sum())

    def to_dict(self) -> dict:
        return {
            "first_year": self.first_year,
            "cold_movies": self.num_cold,
            "rating_share": round(self.rating_share, 4),
        }


def choose_cold_movies(
    years: np.ndarray, rating_rows: np.ndarray, fraction: float
) -> ColdStartSplit:
    """The latest title years whose movies hold about `fraction` of the ratings.

    Years are taken from the latest back while that brings the cold share of
    ratings closer to `fraction`, and at least one year when `fraction > 0`.

    Args:
        years: [vocab_size] title year per vocabulary row, 0 for none (and
            for `PAD_ID`).
        rating_rows: [num_ratings] vocabulary row of every rating.
        fraction: Wanted share of ratings; 0 makes no movie cold.

    Raises:
        ValueError: `fraction` outside [0, 0.5], or no title has a year.
    """
    if not 0.0 <= fraction <= 0.5:
        raise ValueError(
            f"`cold_start_fraction` must be in [0, 0.5], got {fraction}; 0.05 "
            "holds out the latest years with about 5% of the ratings, 0 none."
        )
    vocab_size = len(years)
    none = ColdStartSplit(np.zeros(vocab_size, dtype=bool), 0, 0.0)
    if fraction == 0.0 or len(rating_rows) == 0:
        return none
    counts = np.bincount(rating_rows, minlength=vocab_size)
    known = np.unique(years[years > 0])[::-1]  # latest first
    if known.size == 0:
        raise ValueError(
            "No movie title carries a year, so no cold-start movies can be "
            "chosen; set `--cold-start-fraction 0`."
        )
    share_per_year = np.array(
        [counts[years == year].sum() for year in known], dtype=np.float64
    ) / len(rating_rows)
    cumulative = np.cumsum(share_per_year)
    # The number of latest years whose share is closest to `fraction`.
    taken = int(np.argmin(np.abs(cumulative - fraction))) + 1
    first_year = int(known[taken - 1])
    is_cold = years >= first_year
    is_cold[PAD_ID] = False
    split = ColdStartSplit(is_cold, first_year, float(cumulative[taken - 1]))
    logger.info(
        "Cold-start movies: %d titles from %d on, %.1f%% of the ratings; kept "
        "out of training.",
        split.num_cold,
        first_year,
        100 * split.rating_share,
    )
    return split


def without_cold_targets(batch: dict[str, np.ndarray], is_cold: np.ndarray) -> dict:
    """Training examples with no cold movie: cold targets dropped, cold
    history movies turned to padding (ratings to 0).

    Args:
        batch: Example columns; histories [n, max_history], targets [n].
        is_cold: [vocab_size] bool.

    Returns:
        The columns of the examples whose target is warm.
    """
    keep = ~is_cold[batch[TARGET_ID]]
    kept = {name: column[keep] for name, column in batch.items()}
    return mask_cold_history(kept, is_cold)


def mask_cold_history(batch: dict[str, np.ndarray], is_cold: np.ndarray) -> dict:
    """Examples whose cold history movies read as padding (rating 0).

    Padding sits at the end of a history and the towers mask it wherever it
    sits, so a padded hole inside a history is read as a shorter history.
    """
    ids = batch[HISTORY_IDS]
    cold = is_cold[ids]
    if not cold.any():
        return batch
    masked = dict(batch)
    masked[HISTORY_IDS] = np.where(cold, PAD_ID, ids).astype(ids.dtype)
    ratings = batch[HISTORY_RATINGS]
    masked[HISTORY_RATINGS] = np.where(cold, 0.0, ratings).astype(ratings.dtype)
    return masked
