"""The movie vocabulary: MovieLens movie ids to rows of the movie table.

Numpy alone, so that serving can map movies to rows without importing Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recray.schema import PAD_ID


@dataclass(frozen=True)
class MovieVocabulary:
    """Maps MovieLens movie ids to rows of the embedding table.

    Row `PAD_ID` (0) is padding and unknown movies; movie `movie_ids[i]` is
    row `i + 1`.
    """

    movie_ids: np.ndarray  # [num_movies] sorted int64

    @property
    def size(self) -> int:
        """Rows of the embedding table, the padding row included."""
        return len(self.movie_ids) + 1

    def rows(self, movie_ids: np.ndarray) -> np.ndarray:
        """Vocabulary rows [n] of MovieLens ids [n]; unknown ids map to `PAD_ID`."""
        positions = np.searchsorted(self.movie_ids, movie_ids)
        positions = np.clip(positions, 0, len(self.movie_ids) - 1)
        known = self.movie_ids[positions] == movie_ids
        return np.where(known, positions + 1, PAD_ID).astype(np.int32)
