"""The movies a trained run can recommend, with their text vectors.

A run's catalogue is the movies it was trained on (`movie_texts.parquet`,
`movie_embeddings.npz`) followed by the movies added since with `recray
add-movies` (`added_movies.parquet`, `added_embeddings.npz`). Both towers see a
movie only through its frozen text vector, so this table of vectors is what
serving extends: a new movie's vector is appended here, its candidate
embedding goes into the index, and histories that hold it are read through the
query model's `query_from_vectors` signature.

Files in the run folder (besides those of the pipeline):

    query_model/           SavedModel, `serving_default` and `query_from_vectors`
    candidate_model/       SavedModel, text vectors -> candidate embeddings
    index/                 `saved_model/` (top-k over candidate embeddings),
                           `movies.parquet` (movie_id, title, added), its row
                           order that of `candidate_embeddings.npy`, and
                           `index.json` (kind, counts)
    added_movies.parquet   movie_id, title, text of each added movie
    added_embeddings.npz   movie_id, vectors of the added movies
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recray.config import PipelineConfig, load_yaml
from recray.pipeline import RunPaths
from recray.serving.titles import TitleMatcher

ADDED_SCHEMA = pa.schema(
    [
        pa.field("movie_id", pa.int64(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
    ]
)


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
    """Movie ids, titles and text vectors, row-aligned.

    Attributes:
        movie_ids: [num_movies] int64.
        titles: Title with year of each row.
        vectors: [num_movies, dim] float32 text embeddings.
        added: [num_movies] bool, true for movies added after training.
    """

    movie_ids: np.ndarray
    titles: list[str]
    vectors: np.ndarray
    added: np.ndarray

    def __len__(self) -> int:
        return len(self.movie_ids)

    def matcher(self) -> TitleMatcher:
        return TitleMatcher(self.titles)

    def to_table(self) -> pa.Table:
        return pa.table(
            {"movie_id": self.movie_ids, "title": self.titles, "added": self.added}
        )


def load_catalogue(paths: ServingPaths) -> Catalogue:
    """The run's movies: trained on, then added.

    Raises:
        FileNotFoundError: The run has no movie texts or embeddings.
        ValueError: The files disagree on which movies they hold.
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
    titles = texts["title"].to_pylist()
    added = np.zeros(len(movie_ids), bool)

    if paths.added_movies.exists():
        new = pq.read_table(paths.added_movies)
        with np.load(_need(paths.added_embeddings, "added movies lack vectors")) as s:
            new_ids, new_vectors = s["movie_id"], s["vectors"]
        if not np.array_equal(new_ids, new["movie_id"].to_numpy()):
            raise ValueError(
                f"`{paths.added_embeddings}` and `{paths.added_movies}` disagree "
                "on the added movies; restore both from the same `add-movies`."
            )
        movie_ids = np.concatenate([movie_ids, new_ids])
        vectors = np.concatenate([vectors, new_vectors])
        titles += new["title"].to_pylist()
        added = np.concatenate([added, np.ones(len(new_ids), bool)])
    return Catalogue(
        movie_ids.astype(np.int64), titles, vectors.astype(np.float32), added
    )


def read_index_info(paths: ServingPaths) -> dict:
    """What `index/index.json` says about the exported index."""
    return json.loads(_need(paths.index / "index.json", "no index").read_text())
