"""Reading MovieLens and TMDB, validating them, and building movie texts."""

from recray.data.movielens import (
    LINKS_SCHEMA,
    MOVIES_SCHEMA,
    RATINGS_SCHEMA,
    TAGS_SCHEMA,
    MovieLensData,
    load_movielens,
)
from recray.data.report import DataReport
from recray.data.texts import MOVIE_TEXTS_SCHEMA, build_movie_texts, log_examples
from recray.data.tmdb import TMDB_SCHEMA, load_tmdb

__all__ = [
    "LINKS_SCHEMA",
    "MOVIES_SCHEMA",
    "MOVIE_TEXTS_SCHEMA",
    "RATINGS_SCHEMA",
    "TAGS_SCHEMA",
    "TMDB_SCHEMA",
    "DataReport",
    "MovieLensData",
    "build_movie_texts",
    "load_movielens",
    "load_tmdb",
    "log_examples",
]
