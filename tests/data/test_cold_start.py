"""The cold-start split: which movies are held out and how examples change."""

from __future__ import annotations

import numpy as np
import pytest

from recray.data.cold_start import (
    choose_cold_movies,
    mask_cold_history,
    without_cold_targets,
)
from recray.schema import HISTORY_IDS, HISTORY_RATINGS, TARGET_ID


def test_the_latest_years_closest_to_the_share_are_cold():
    # Rows 1..5 with years; row 0 is padding.
    years = np.array([0, 1990, 2000, 2010, 2011, 0])
    # 100 ratings: 2011 holds 2%, 2010 4%, 2000 20%.
    rows = np.repeat([1, 2, 3, 4, 5], [70, 20, 4, 2, 4])
    split = choose_cold_movies(years, rows, fraction=0.05)

    assert split.first_year == 2010
    np.testing.assert_array_equal(split.is_cold, [0, 0, 0, 1, 1, 0])
    assert split.rating_share == pytest.approx(0.06)
    assert choose_cold_movies(years, rows, 0.0).num_cold == 0
    with pytest.raises(ValueError, match="cold_start_fraction"):
        choose_cold_movies(years, rows, 0.9)


def test_training_examples_lose_cold_targets_and_cold_history_movies():
    is_cold = np.array([False, False, True, False])
    batch = {
        HISTORY_IDS: np.array([[1, 2, 3], [2, 0, 0], [3, 1, 0]], np.int32),
        HISTORY_RATINGS: np.array([[0.5, 1.0, -1.0], [2.0, 0, 0], [1, 1, 0]], "f4"),
        TARGET_ID: np.array([3, 1, 2], np.int32),
    }
    kept = without_cold_targets(batch, is_cold)

    np.testing.assert_array_equal(kept[TARGET_ID], [3, 1])
    np.testing.assert_array_equal(kept[HISTORY_IDS], [[1, 0, 3], [0, 0, 0]])
    np.testing.assert_array_equal(kept[HISTORY_RATINGS], [[0.5, 0, -1.0], [0, 0, 0]])
    assert not is_cold[kept[HISTORY_IDS]].any()
    assert mask_cold_history(batch, np.zeros(4, bool)) is batch
