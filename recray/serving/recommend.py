"""Answering a user: a typed watch history to the best movies of the index.

A history's movies are looked up in the run's catalogue (trained and added
movies), their text vectors gathered, and the ratings centred on the mean of
the given ratings, as the histories stage centres each example's ratings on
the mean of the ratings before its target. The query model's
`query_from_vectors` signature turns that into a query embedding, and the
index returns the best-scoring movies; the history's own movies are left out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recray.serving.catalogue import (
    ServingPaths,
    load_catalogue,
    load_run_config,
    read_index_info,
)
from recray.serving.titles import HistoryItem, UnknownTitleError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recommendation:
    """One recommended movie."""

    movie_id: int
    title: str
    score: float


class Recommender:
    """A trained run's query model, index and catalogue, loaded once."""

    def __init__(self, run_dir: Path) -> None:
        """Load the run's serving files.

        Raises:
            FileNotFoundError: The run is not trained (or has no index).
            ValueError: The index holds other movies than the catalogue; run
                `recray add-movies` again or rerun `train`.
        """
        from recray.model.export import ExportedIndex, ExportedQueryModel
        from recray.serving.index import INDEX_MODEL

        paths = ServingPaths(Path(run_dir))
        self.config = load_run_config(paths)
        self.catalogue = load_catalogue(paths)
        self.matcher = self.catalogue.matcher()
        info = read_index_info(paths)
        if info["movies"] != len(self.catalogue):
            raise ValueError(
                f"The index `{paths.index}` holds {info['movies']} movies, the "
                f"catalogue {len(self.catalogue)}: an `add-movies` stopped half "
                "way. Rerun it, or rerun the `train` stage."
            )
        self.query_model = ExportedQueryModel(paths.query_model)
        self.index = ExportedIndex(paths.index / INDEX_MODEL)
        self.max_history = self.config.data.max_history
        self._row_of_id = {
            int(movie_id): row for row, movie_id in enumerate(self.catalogue.movie_ids)
        }

    def rows(self, history: Sequence[HistoryItem]) -> np.ndarray:
        """Catalogue rows [n] of typed titles.

        Raises:
            UnknownTitleError: A title matches no movie; lists every such title
                with its closest matches.
        """
        rows, problems = [], []
        for item in history:
            try:
                rows.append(self.matcher.row(item.title))
            except UnknownTitleError as err:
                problems.append(str(err))
        if problems:
            raise UnknownTitleError(" ".join(problems))
        return np.array(rows, np.int64)

    def recommend(self, history: Sequence[HistoryItem], k: int = 10) -> list:
        """The `k` best movies for a typed history (oldest first)."""
        rows = self.rows(history)
        ratings = np.array([item.rating for item in history], np.float32)
        return self.recommend_rows(rows, ratings, k)

    def recommend_rows(
        self, rows: np.ndarray, ratings: np.ndarray, k: int = 10
    ) -> list[Recommendation]:
        """The `k` best movies, not in the history, for catalogue rows [n].

        Args:
            rows: Catalogue rows of the history, oldest first.
            ratings: [n] star ratings, 0.5 to 5.

        Raises:
            ValueError: `k` < 1, an empty history, or rows and ratings differ
                in length.
        """
        if k < 1:
            raise ValueError(f"`k` must be at least 1, got {k}.")
        if len(rows) == 0 or len(rows) != len(ratings):
            raise ValueError(
                f"A history needs one rating per movie and at least one movie; "
                f"got {len(rows)} movies and {len(ratings)} ratings."
            )
        seen = {int(self.catalogue.movie_ids[row]) for row in rows}
        # Centred on the mean of the whole history, as the training examples
        # are (on all earlier ratings), then the latest `max_history` movies.
        centred = ratings - ratings.mean()
        rows, centred = rows[-self.max_history :], centred[-self.max_history :]
        query = self.query_model.from_vectors(
            self.catalogue.inputs[rows][np.newaxis],  # [1, n, width]
            np.ones((1, len(rows)), bool),
            centred[np.newaxis].astype(np.float32),
        )  # [1, embedding_dim]

        wanted = min(k + len(seen), len(self.catalogue))
        scores, movie_ids = self.index(query, wanted)
        found = []
        for movie_id, score in zip(movie_ids[0], scores[0], strict=True):
            if int(movie_id) in seen:
                continue
            row = self._row_of_id[int(movie_id)]
            found.append(
                Recommendation(int(movie_id), self.catalogue.titles[row], float(score))
            )
        return found[:k]
