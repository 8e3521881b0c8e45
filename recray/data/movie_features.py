"""What the towers read of a movie besides its text embedding: year and genres.

A sentence embedding hardly tells 1995 from 2005, yet a user's next movie is
very likely of the era of the movies they rated last. So each movie's row of
the towers' frozen table is its text embedding followed by two short, fixed
encodings of facts that MovieLens states outright and that a movie has before
anyone rates it:

    [text embedding (dim) | year (len(YEAR_CENTRES)) | genres (len(GENRES))]

The year is a row of Gaussian bumps, one every 5 years, so that neighbouring
years look alike. Years later than the latest movie seen in training are
clipped to it: a new movie reads as the newest kind the towers know, never
as a bump that no training movie ever lit up. An unknown year is all zeros.

Genres are flags of MovieLens' genre list, scaled so that a movie's few flags
weigh about half as much as its unit-length text embedding. Genres outside
the list are left out of the flags (they stay in the text).

Training (recray.pipeline) and serving (recray.serving.catalogue) build the
rows with `tower_inputs` and one `FeatureSpec`, so a movie added after
training is read exactly as a trained one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

# MovieLens' genres (ml-latest, ml-25m and older), in its README's order.
GENRES = (
    "action",
    "adventure",
    "animation",
    "children",
    "comedy",
    "crime",
    "documentary",
    "drama",
    "fantasy",
    "film-noir",
    "horror",
    "imax",
    "musical",
    "mystery",
    "romance",
    "sci-fi",
    "thriller",
    "war",
    "western",
)
# ml-100k spells one genre its own way.
_GENRE_ALIASES = {"children's": "children"}
# Flags of this size: three genres give a vector of length 0.52.
GENRE_SCALE = 0.3

YEAR_CENTRES = np.arange(1900, 2031, 5, dtype=np.float32)
YEAR_WIDTH = 5.0


def column_years(table) -> np.ndarray:
    """The `year` column of a pyarrow table as int32 [num], 0 where null."""
    return table["year"].fill_null(0).to_numpy().astype(np.int32)


def year_encoding(years: np.ndarray, last_year: int) -> np.ndarray:
    """Gaussian bumps of each movie's release year.

    Args:
        years: [num] release years; 0 where unknown.
        last_year: Later years are read as this one.

    Returns:
        [num, len(YEAR_CENTRES)] float32; all zeros for an unknown year.
    """
    years = np.asarray(years, dtype=np.float32)
    clipped = np.minimum(years, last_year)[:, np.newaxis]  # [num, 1]
    bumps = np.exp(-(((clipped - YEAR_CENTRES) / YEAR_WIDTH) ** 2))
    return np.where(years[:, np.newaxis] > 0, bumps, 0.0).astype(np.float32)


def _folded(name: str) -> str:
    folded = name.strip().casefold()
    return _GENRE_ALIASES.get(folded, folded)


def genre_flags(genres: Sequence[Sequence[str]]) -> np.ndarray:
    """`GENRE_SCALE` where a movie has a genre of `GENRES`, else 0.

    Args:
        genres: Each movie's genre names, in any case. Names outside
            `GENRES` are left out (`unknown_genres` lists them).

    Returns:
        [num, len(GENRES)] float32.
    """
    column = {name: index for index, name in enumerate(GENRES)}
    flags = np.zeros((len(genres), len(GENRES)), dtype=np.float32)
    for row, names in enumerate(genres):
        for name in names:
            if _folded(name) in column:
                flags[row, column[_folded(name)]] = GENRE_SCALE
    return flags


def unknown_genres(genres: Sequence[Sequence[str]]) -> dict[str, int]:
    """Genre names outside `GENRES`, with the number of movies of each."""
    known = set(GENRES)
    counts: dict[str, int] = {}
    for names in genres:
        for name in set(names):
            if _folded(name) not in known:
                counts[name] = counts.get(name, 0) + 1
    return counts


def warn_of_unknown_genres(genres: Sequence[Sequence[str]]) -> None:
    """Log a warning naming the genres that get no flag, if any."""
    unknown = unknown_genres(genres)
    if unknown:
        logger.warning(
            "Genres outside MovieLens' list are left out of the genre features "
            "(they stay in the movie texts): %s",
            ", ".join(f"`{name}` ({count} movies)" for name, count in unknown.items()),
        )


def last_training_year(years: np.ndarray, training_counts: np.ndarray) -> int:
    """The latest release year of a movie that training users rated.

    Args:
        years: [num] release years, 0 where unknown.
        training_counts: [num] training ratings of each movie.

    Raises:
        ValueError: No movie with training ratings has a known year.
    """
    years = np.asarray(years)
    rated = years[(np.asarray(training_counts) > 0) & (years > 0)]
    if rated.size == 0:
        raise ValueError(
            "No movie that training users rated has a release year in its "
            "title, so the year features have nothing to learn from; turn them "
            "off with `--year-features False`."
        )
    return int(rated.max())


@dataclass(frozen=True)
class FeatureSpec:
    """What a run's towers read of a movie besides its text embedding.

    The train stage writes it to the run's `movie_features.json`, with the
    table's width; serving builds rows from that file, never from settings
    that may have changed since.

    Attributes:
        year_features: Append the year encoding.
        genre_features: Append the genre flags.
        last_year: The year the year encoding clips at; needed with
            `year_features`.
    """

    year_features: bool
    genre_features: bool
    last_year: int | None = None

    def __post_init__(self) -> None:
        if self.year_features and self.last_year is None:
            raise ValueError("`year_features` needs `last_year`, the clip year.")


def tower_inputs(
    text_vectors: np.ndarray,
    years: np.ndarray,
    genres: Sequence[Sequence[str]],
    spec: FeatureSpec,
) -> np.ndarray:
    """Rows of the towers' movie table: text embedding, then year and genres.

    Args:
        text_vectors: [num, dim] text embeddings.
        years: [num] release years, 0 where unknown.
        genres: Each movie's genres.
        spec: What to append.

    Returns:
        [num, dim (+ len(YEAR_CENTRES)) (+ len(GENRES))] float32.
    """
    parts = [np.asarray(text_vectors, dtype=np.float32)]
    if spec.year_features:
        parts.append(year_encoding(years, spec.last_year))
    if spec.genre_features:
        parts.append(genre_flags(genres))
    return np.concatenate(parts, axis=1)
