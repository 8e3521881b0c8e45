"""Saving the towers and a candidate index for serving, and loading them back.

Everything here is a TensorFlow SavedModel that loads in a fresh process with
TensorFlow alone, without recray's layer classes (the ScaNN index also needs
the `scann` package).

Query model (`query_model/`), two signatures:
    `serving_default`: `history_ids` (int32) and `history_ratings` (float32),
        both [batch, length] with any length, rows of the training vocabulary
        -> `query_embedding` [batch, embedding_dim].
    `query_from_vectors`: `history_vectors` [batch, length, width] (float32),
        `history_mask` [batch, length] (bool, true on real movies) and
        `history_ratings` [batch, length] -> `query_embedding`. The query model
        only ever sees a movie through its frozen row of the movie table (text
        vector, year and genre features), so a history may hold movies added
        after training: the caller builds their rows in the run's extendable
        catalogue (`recray.serving`).

Candidate model (`candidate_model/`), signature `serving_default`:
    `movie_vectors` [num, width] and `movie_rows` [num] (int32) ->
    `candidate_embedding` [num, embedding_dim]: the candidate embedding of any
    movie whose table row can be built. `movie_rows` is each movie's row of
    the training vocabulary, which picks its learned bias (`movie_bias`), or
    `PAD_ID` for a movie added after training: its bias is 0, as for the
    cold-start movies training never scored.

`embedding_dim` is the config's `output_dim`, plus one column with
`movie_bias`: ones in query embeddings, the biases in candidate embeddings.

Candidate index, signature `serving_default`:
    `query_embedding` [batch, embedding_dim] and `k` (int32 scalar) -> `scores`
    [batch, k] and `movie_ids` [batch, k] (int64), best first. TFRS'
    `BruteForce` (exact), or `ScaNN` (approximate) where `scann` is installed.

The vector signatures apply the towers' own `call` with the frozen text
embedding lookup replaced by the given vectors (`_GivenVectors`), so they run
the very layers and code that training ran; each export checks that the two
ways agree on the training vocabulary before it writes anything.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow as tf

from recray.schema import HISTORY_IDS, HISTORY_RATINGS, PAD_ID

logger = logging.getLogger(__name__)

QUERY_EMBEDDING = "query_embedding"
CANDIDATE_EMBEDDING = "candidate_embedding"
QUERY_FROM_VECTORS = "query_from_vectors"
HISTORY_VECTORS = "history_vectors"
HISTORY_MASK = "history_mask"
MOVIE_VECTORS = "movie_vectors"
MOVIE_ROWS = "movie_rows"
SCORES = "scores"
MOVIE_IDS = "movie_ids"

IndexKind = Literal["auto", "brute-force", "scann"]
SCANN_INSTALL_HINT = (
    "ScaNN is not installed: `pip install scann` (Linux x86-64 wheels, built "
    "against a matching TensorFlow), or use the exact `brute-force` index."
)
# Largest difference tolerated between a tower on ids and on looked-up vectors.
_CHECK_ATOL = 1e-4


class _GivenVectors:
    """A stand-in for a tower that hands out given vectors instead of a lookup.

    Attribute reads go to the wrapped tower (its config and trained layers),
    except `movie_embedding`, which returns `vectors` whatever ids it is
    called with. `Tower.call(_GivenVectors(tower, vectors), ...)` therefore
    runs the tower's own code on vectors the caller looked up.
    """

    def __init__(self, tower: tf.keras.Model, vectors: tf.Tensor) -> None:
        object.__setattr__(self, "_tower", tower)
        object.__setattr__(self, "_vectors", vectors)

    def __getattr__(self, name: str):
        if name == "movie_embedding":
            return lambda ids: self._vectors
        return getattr(self._tower, name)


def query_from_vectors(
    query_model: tf.keras.Model,
    history_vectors: tf.Tensor,
    history_mask: tf.Tensor,
    history_ratings: tf.Tensor,
) -> tf.Tensor:
    """Query embeddings [batch, embedding_dim] of histories given as table rows.

    Args:
        query_model: A trained `recray.model.towers.QueryModel`.
        history_vectors: [batch, length, width] movie table rows, any at
            padding.
        history_mask: [batch, length] true where a position holds a movie.
        history_ratings: [batch, length] centred ratings.
    """
    # Any non-padding id marks a real movie; the lookup itself is replaced.
    ids = tf.where(history_mask, 1, PAD_ID)
    vectors = history_vectors * tf.cast(history_mask, history_vectors.dtype)[..., None]
    features = {HISTORY_IDS: ids, HISTORY_RATINGS: history_ratings}
    tower = _GivenVectors(query_model, vectors)
    return type(query_model).call(tower, features, training=False)


def candidates_from_vectors(
    candidate_model: tf.keras.Model, movie_vectors: tf.Tensor, movie_rows: tf.Tensor
) -> tf.Tensor:
    """Candidate embeddings [num, embedding_dim] of movie table rows.

    Args:
        candidate_model: A trained `recray.model.towers.CandidateModel`.
        movie_vectors: [num, width] movie table rows.
        movie_rows: [num] vocabulary rows, `PAD_ID` for movies outside the
            training vocabulary; only the movie bias reads them.
    """
    tower = _GivenVectors(candidate_model, movie_vectors)
    return type(candidate_model).call(tower, movie_rows, training=False)


def _movie_table(tower: tf.keras.Model) -> np.ndarray:
    """The frozen movie table [vocab_size, width] a tower looks movies up in."""
    return tower.movie_embedding.embeddings.numpy()


def _check_close(name: str, by_ids: np.ndarray, by_vectors: np.ndarray) -> None:
    gap = float(np.max(np.abs(by_ids - by_vectors))) if by_ids.size else 0.0
    if gap > _CHECK_ATOL:
        raise RuntimeError(
            f"The exported `{name}` differs from the tower by {gap:.2e} on the "
            "training vocabulary: the tower's `call` no longer reads movies only "
            "through `movie_embedding`. Update `recray/model/export.py` with it."
        )


def export_query_model(query_model: tf.keras.Model, path: Path) -> None:
    """Write `query_model` as a SavedModel with both query signatures.

    Raises:
        RuntimeError: The vector signature disagrees with the tower.
    """
    table = _movie_table(query_model)
    dim = table.shape[1]

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.int32, name=HISTORY_IDS),
            tf.TensorSpec([None, None], tf.float32, name=HISTORY_RATINGS),
        ]
    )
    def serve(history_ids: tf.Tensor, history_ratings: tf.Tensor) -> dict:
        features = {HISTORY_IDS: history_ids, HISTORY_RATINGS: history_ratings}
        return {QUERY_EMBEDDING: query_model(features, training=False)}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, dim], tf.float32, name=HISTORY_VECTORS),
            tf.TensorSpec([None, None], tf.bool, name=HISTORY_MASK),
            tf.TensorSpec([None, None], tf.float32, name=HISTORY_RATINGS),
        ]
    )
    def serve_vectors(
        history_vectors: tf.Tensor, history_mask: tf.Tensor, history_ratings: tf.Tensor
    ) -> dict:
        embedding = query_from_vectors(
            query_model, history_vectors, history_mask, history_ratings
        )
        return {QUERY_EMBEDDING: embedding}

    # A few histories over the vocabulary, one with padding, both ways.
    rng = np.random.default_rng(0)
    ids = rng.integers(1, len(table), size=(4, 6)).astype(np.int32)
    ids[0, 3:] = PAD_ID
    ratings = rng.normal(size=ids.shape).astype(np.float32)
    by_ids = serve(tf.constant(ids), tf.constant(ratings))[QUERY_EMBEDDING]
    by_vectors = serve_vectors(
        tf.constant(table[ids]), tf.constant(ids != PAD_ID), tf.constant(ratings)
    )[QUERY_EMBEDDING]
    _check_close(QUERY_FROM_VECTORS, by_ids.numpy(), by_vectors.numpy())

    tf.saved_model.save(
        query_model,
        str(path),
        signatures={"serving_default": serve, QUERY_FROM_VECTORS: serve_vectors},
    )


def export_candidate_model(candidate_model: tf.keras.Model, path: Path) -> None:
    """Write the candidate model as a SavedModel from movie table rows.

    Raises:
        RuntimeError: The vector signature disagrees with the tower.
    """
    table = _movie_table(candidate_model)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, table.shape[1]], tf.float32, name=MOVIE_VECTORS),
            tf.TensorSpec([None], tf.int32, name=MOVIE_ROWS),
        ]
    )
    def serve(movie_vectors: tf.Tensor, movie_rows: tf.Tensor) -> dict:
        embedding = candidates_from_vectors(candidate_model, movie_vectors, movie_rows)
        return {CANDIDATE_EMBEDDING: embedding}

    rows = np.arange(1, min(len(table), 65), dtype=np.int32)
    by_ids = candidate_model(tf.constant(rows), training=False).numpy()
    by_vectors = serve(tf.constant(table[rows]), tf.constant(rows))
    by_vectors = by_vectors[CANDIDATE_EMBEDDING].numpy()
    _check_close("candidate_model", by_ids, by_vectors)

    tf.saved_model.save(
        candidate_model, str(path), signatures={"serving_default": serve}
    )


def resolve_index_kind(kind: IndexKind) -> Literal["brute-force", "scann"]:
    """The index `kind` to build: `auto` is ScaNN where installed, else exact.

    Raises:
        ModuleNotFoundError: `scann` is asked for and not installed.
    """
    has_scann = importlib.util.find_spec("scann") is not None
    if kind == "scann" and not has_scann:
        raise ModuleNotFoundError(SCANN_INSTALL_HINT)
    if kind == "auto":
        if not has_scann:
            logger.info("Exact BruteForce index. %s", SCANN_INSTALL_HINT)
        return "scann" if has_scann else "brute-force"
    if kind not in ("brute-force", "scann"):
        raise ValueError(
            f"Unknown index kind `{kind}`; choose `auto`, `brute-force` or `scann`."
        )
    return kind


class _IndexModule(tf.Module):
    """A TFRS top-k layer behind one signature: query embeddings and k."""

    def __init__(self, layer: tf.keras.layers.Layer, output_dim: int) -> None:
        super().__init__()
        self.layer = layer
        self.serve = tf.function(
            self._serve,
            input_signature=[
                tf.TensorSpec([None, output_dim], tf.float32, name=QUERY_EMBEDDING),
                tf.TensorSpec([], tf.int32, name="k"),
            ],
        )

    def _serve(self, query_embedding: tf.Tensor, k: tf.Tensor) -> dict:
        scores, movie_ids = self.layer(query_embedding, k=k)
        return {SCORES: scores, MOVIE_IDS: movie_ids}


def export_index(
    candidate_embeddings: np.ndarray,
    movie_ids: np.ndarray,
    path: Path,
    kind: IndexKind = "auto",
) -> str:
    """Write a top-k index over candidate embeddings as a SavedModel.

    Args:
        candidate_embeddings: [num_movies, embedding_dim] float32.
        movie_ids: [num_movies] int64, the id of each row.
        path: Folder of the SavedModel.
        kind: `brute-force`, `scann` or `auto` (ScaNN where installed).

    Returns:
        The kind of index written.

    Raises:
        ValueError: Rows and ids differ in number, or there are no candidates.
        ModuleNotFoundError: `scann` is asked for and not installed.
    """
    import tensorflow_recommenders as tfrs

    candidates = np.asarray(candidate_embeddings, np.float32)
    movie_ids = np.asarray(movie_ids, np.int64)
    if candidates.ndim != 2 or len(candidates) != len(movie_ids) or not len(movie_ids):
        raise ValueError(
            f"An index needs one movie id per candidate row, got candidates of "
            f"shape {candidates.shape} and {len(movie_ids)} movie ids."
        )
    kind = resolve_index_kind(kind)
    options = None
    if kind == "scann":
        # TODO(serving): the ScaNN branch is untested here, as `scann` has no
        # wheel for this machine's TensorFlow; its settings are TFRS' defaults.
        layer = tfrs.layers.factorized_top_k.ScaNN(
            num_leaves=max(1, int(np.sqrt(len(movie_ids)))),
            num_leaves_to_search=max(1, int(np.sqrt(len(movie_ids))) // 10),
        )
        options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])
    else:
        layer = tfrs.layers.factorized_top_k.BruteForce()
    layer.index(tf.constant(candidates), tf.constant(movie_ids))
    module = _IndexModule(layer, candidates.shape[1])
    tf.saved_model.save(
        module, str(path), signatures={"serving_default": module.serve}, options=options
    )
    return kind


def _load_signature(
    path: Path, name: str = "serving_default", inputs: tuple[str, ...] = ()
):
    """The loaded SavedModel at `path` and its signature `name`, which must
    take every one of `inputs`: a clear error for an older export."""
    if not (path / "saved_model.pb").is_file():
        raise FileNotFoundError(
            f"No SavedModel at `{path}`; train a run first (`python jobs/pipeline.py`)."
        )
    loaded = tf.saved_model.load(str(path))
    if name not in loaded.signatures:
        raise ValueError(
            f"The SavedModel at `{path}` has no `{name}` signature (it has "
            f"{sorted(loaded.signatures)}); it was exported by an older recray: "
            "rerun the `train` stage."
        )
    signature = loaded.signatures[name]
    missing = sorted(set(inputs) - set(signature.structured_input_signature[1]))
    if missing:
        raise ValueError(
            f"The `{name}` signature of the SavedModel at `{path}` takes no "
            f"{missing}; it was exported by an older recray: rerun the `train` "
            "stage."
        )
    # The signature holds the loaded object's variables only while it lives.
    return loaded, signature


class ExportedQueryModel:
    """A query model loaded from `export_query_model`'s SavedModel."""

    def __init__(self, path: Path) -> None:
        self._loaded, self._serve = _load_signature(path)
        self._from_vectors = None
        if QUERY_FROM_VECTORS in self._loaded.signatures:
            self._from_vectors = self._loaded.signatures[QUERY_FROM_VECTORS]

    def __call__(
        self,
        history_ids: np.ndarray,
        history_ratings: np.ndarray,
        batch_size: int = 2048,
    ) -> np.ndarray:
        """Query embeddings [n, embedding_dim] of padded histories [n, length]."""
        outputs = []
        for start in range(0, len(history_ids), batch_size):
            chunk = slice(start, start + batch_size)
            result = self._serve(
                history_ids=tf.constant(history_ids[chunk], tf.int32),
                history_ratings=tf.constant(history_ratings[chunk], tf.float32),
            )
            outputs.append(result[QUERY_EMBEDDING].numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)

    def from_vectors(
        self,
        history_vectors: np.ndarray,
        history_mask: np.ndarray,
        history_ratings: np.ndarray,
    ) -> np.ndarray:
        """Query embeddings [n, embedding_dim] of histories as movie table rows.

        Args:
            history_vectors: [n, length, width] float32 movie table rows.
            history_mask: [n, length] bool, true on real movies.
            history_ratings: [n, length] centred ratings.

        Raises:
            ValueError: The model was exported without `query_from_vectors`.
        """
        if self._from_vectors is None:
            raise ValueError(
                f"This query model has no `{QUERY_FROM_VECTORS}` signature; it "
                "was exported by an older recray: rerun the `train` stage."
            )
        result = self._from_vectors(
            history_vectors=tf.constant(history_vectors, tf.float32),
            history_mask=tf.constant(history_mask, tf.bool),
            history_ratings=tf.constant(history_ratings, tf.float32),
        )
        return result[QUERY_EMBEDDING].numpy()


class ExportedCandidateModel:
    """A candidate model loaded from `export_candidate_model`'s SavedModel."""

    def __init__(self, path: Path) -> None:
        self._loaded, self._serve = _load_signature(
            path, inputs=(MOVIE_VECTORS, MOVIE_ROWS)
        )

    def __call__(self, movie_vectors: np.ndarray, movie_rows: np.ndarray) -> np.ndarray:
        """Candidate embeddings [num, embedding_dim] of table rows [num, width]
        and vocabulary rows [num] (`PAD_ID` for movies outside it)."""
        result = self._serve(
            movie_vectors=tf.constant(movie_vectors, tf.float32),
            movie_rows=tf.constant(movie_rows, tf.int32),
        )
        return result[CANDIDATE_EMBEDDING].numpy()


class ExportedIndex:
    """A candidate index loaded from `export_index`'s SavedModel."""

    def __init__(self, path: Path) -> None:
        self._loaded, self._serve = _load_signature(path)

    def __call__(
        self, query_embedding: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The `k` best movies per query: scores and movie ids, [n, k] each.

        `k` must not exceed the number of movies in the index.
        """
        result = self._serve(
            query_embedding=tf.constant(query_embedding, tf.float32),
            k=tf.constant(k, tf.int32),
        )
        return result[SCORES].numpy(), result[MOVIE_IDS].numpy()
