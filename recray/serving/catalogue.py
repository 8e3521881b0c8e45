"""The movies a trained run can recommend, with their text vectors.

A run's catalogue is the movies it was trained on (`movie_texts.parquet`,
`movie_embeddings.npz`) followed by the movies added since with `recray
add-movies` (`added_movies.parquet`, `added_embeddings.npz`). Both towers see a
movie only through its frozen row of the movie table: its text vector, then
its year and genre features (`recray.data.movie_features`, as the run's
`movie_features.json` says). So this table is what serving extends: a new
movie's row is appended here, its candidate embedding goes into the index,
and histories that hold it are read through the query model's
`query_from_vectors` signature.

Files in the run folder (besides those of the pipeline):

    query_model/           SavedModel, `serving_default` and `query_from_vectors`
    candidate_model/       SavedModel, text vectors -> candidate embeddings
    index/                 `saved_model/` (top-k over candidate embeddings),
                           `movies.parquet` (movie_id, title, added), its row
                           order that of `candidate_embeddings.npy`, and
                           `index.json` (kind, counts)
    added_movies.parquet   movie_id, title, text, year, genres of each added movie
    added_embeddings.npz   movie_id, vectors of the added movies
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recray.config import PipelineConfig, load_yaml
from recray.data.movie_features import FeatureSpec, column_years, tower_inputs
from recray.data.texts import MOVIE_TEXTS_SCHEMA
from recray.data.vocabulary import MovieVocabulary
from recray.pipeline import RunPaths, has_years_and_genres, read_years_and_genres
from recray.schema import PAD_ID
from recray.serving.titles import TitleMatcher

# Added movies are stored as ingest stores the run's own.
ADDED_SCHEMA = MOVIE_TEXTS_SCHEMA


@dataclass(frozen=True)
class ServingPaths(RunPaths):
    """The serving files of one run folder, beside those the stages write."""

    @property
    def candidate_model(self) -> Path:
        return self.root / "candidate_model"

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def added_movies(self) -> Path:
        return self.root / "added_movies.parquet"

    @property
    def added_embeddings(self) -> Path:
        return self.root / "added_embeddings.npz"


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"`{path}` is missing: {what}. Train the run first "
            f"(`recray run --name {path.parent.name}`), or check `--run`."
        )
    return path


def load_run_config(paths: ServingPaths) -> PipelineConfig:
    """The configuration the run was made with."""
    return load_yaml(PipelineConfig, _need(paths.config, "not a run folder"))


@dataclass(frozen=True, eq=False)
class Catalogue:
    """Movie ids, titles, text vectors, years and genres, row-aligned.

    Attributes:
        movie_ids: [num_movies] int64.
        titles: Title with year of each row.
        vectors: [num_movies, dim] float32 text embeddings.
        years: [num_movies] release years, 0 where unknown.
        genres: Each movie's genres.
        added: [num_movies] bool, true for movies added after training.
        features: What the trained towers read besides the text, from the
            run's `movie_features.json`; None before the run is trained.
        width: The trained towers' row width, from the same file.
    """

    movie_ids: np.ndarray
    titles: list[str]
    vectors: np.ndarray
    years: np.ndarray
    genres: list[list[str]]
    added: np.ndarray
    features: FeatureSpec | None = None
    width: int | None = None

    def __len__(self) -> int:
        return len(self.movie_ids)

    @cached_property
    def inputs(self) -> np.ndarray:
        """[num_movies, width] rows of the towers' movie table: the text
        vector, then the year and genre features the run was trained with.

        Raises:
            FileNotFoundError: The run was never trained.
            ValueError: The rows would not be as wide as the trained towers'
                (the text vectors changed since training).
        """
        if self.features is None:
            raise FileNotFoundError(
                "The run has no `movie_features.json`, which its `train` stage "
                "writes: train the run first."
            )
        rows = tower_inputs(self.vectors, self.years, self.genres, self.features)
        if rows.shape[1] != self.width:
            raise ValueError(
                f"The movie table rows are {rows.shape[1]} wide, the trained "
                f"towers read {self.width}: the text vectors are "
                f"{self.vectors.shape[1]}-dim now. Restore the run's embedder "
                "settings, or rerun it from `embed`."
            )
        return rows

    @cached_property
    def rows(self) -> np.ndarray:
        """[num_movies] int32 training vocabulary row of each movie, `PAD_ID`
        for added movies (the candidate model's `movie_rows`)."""
        trained = self.movie_ids[~self.added]
        rows = np.full(len(self), PAD_ID, np.int32)
        rows[~self.added] = MovieVocabulary(trained).rows(trained)
        return rows

    def matcher(self) -> TitleMatcher:
        return TitleMatcher(self.titles)

    def to_table(self) -> pa.Table:
        return pa.table(
            {"movie_id": self.movie_ids, "title": self.titles, "added": self.added}
        )

    def extended(self, texts: pa.Table, vectors: np.ndarray) -> Catalogue:
        """The catalogue with the movies of `texts` (`MOVIE_TEXTS_SCHEMA`) and
        their text vectors [num_new, dim] appended as added movies."""
        return dataclasses.replace(
            self,
            movie_ids=np.concatenate([self.movie_ids, texts["movie_id"].to_numpy()]),
            titles=self.titles + texts["title"].to_pylist(),
            vectors=np.concatenate([self.vectors, vectors.astype(np.float32)]),
            years=np.concatenate([self.years, column_years(texts)]),
            genres=self.genres + texts["genres"].to_pylist(),
            added=np.concatenate([self.added, np.ones(texts.num_rows, bool)]),
        )


def _read_features(paths: ServingPaths) -> tuple[FeatureSpec | None, int | None]:
    """The `FeatureSpec` and row width of `movie_features.json`, if trained."""
    if not paths.movie_features.exists():
        return None, None
    saved = json.loads(paths.movie_features.read_text())
    width = saved.pop("width")
    return FeatureSpec(**saved), width


def load_catalogue(paths: ServingPaths) -> Catalogue:
    """The run's movies: trained on, then added.

    Raises:
        FileNotFoundError: The run has no movie texts or embeddings.
        ValueError: The files disagree on which movies they hold, or predate
            the `year` and `genres` columns.
    """
    texts = pq.read_table(
        _need(paths.movie_texts, "the run has no movie texts"),
        columns=["movie_id", "title"],
    )
    with np.load(_need(paths.movie_embeddings, "the run has no embeddings")) as saved:
        movie_ids, vectors = saved["movie_id"], saved["vectors"]
    if not np.array_equal(movie_ids, texts["movie_id"].to_numpy()):
        raise ValueError(
            f"`{paths.movie_embeddings}` holds other movies than "
            f"`{paths.movie_texts}`; rerun the `embed` stage."
        )
    years, genres = read_years_and_genres(paths.movie_texts)
    features, width = _read_features(paths)
    catalogue = Catalogue(
        movie_ids.astype(np.int64),
        texts["title"].to_pylist(),
        vectors.astype(np.float32),
        years,
        genres,
        np.zeros(len(movie_ids), bool),
        features,
        width,
    )

    if paths.added_movies.exists():
        if not has_years_and_genres(paths.added_movies):
            raise ValueError(
                f"`{paths.added_movies}` was written before added movies kept "
                "their year and genres. Delete it and `added_embeddings.npz`, "
                "then run `recray add-movies` again with the same files."
            )
        new = pq.read_table(paths.added_movies)
        with np.load(_need(paths.added_embeddings, "added movies lack vectors")) as s:
            new_ids, new_vectors = s["movie_id"], s["vectors"]
        if not np.array_equal(new_ids, new["movie_id"].to_numpy()):
            raise ValueError(
                f"`{paths.added_embeddings}` and `{paths.added_movies}` disagree "
                "on the added movies; restore both from the same `add-movies`."
            )
        catalogue = catalogue.extended(new, new_vectors)
    return catalogue


def read_index_info(paths: ServingPaths) -> dict:
    """What `index/index.json` says about the exported index."""
    return json.loads(_need(paths.index / "index.json", "no index").read_text())
