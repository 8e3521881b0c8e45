"""The main job, stage by stage: MovieLens files to an evaluated model.

Stages talk through files in the run folder, so that each one can run on its
own (jobs/<stage>.py) and a rerun of a late stage does not redo the early
ones:

    ingest     -> data_report.json, ratings.parquet, movie_texts.parquet
    embed      -> movie_embeddings.npz (movie ids and their vectors)
    histories  -> examples/train/, examples/validation/, histories.json
    train      -> train/ (Ray Train checkpoints), training.json,
                  query_model/ (SavedModel), candidates.parquet,
                  candidate_embeddings.npy
    evaluate   -> metrics.json

TensorFlow is imported inside the stages that need it, so that ingest, embed
and histories start fast and small.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recray.config import PipelineConfig, load_yaml, save_yaml

logger = logging.getLogger(__name__)

STAGES = ("ingest", "embed", "histories", "train", "evaluate")


@dataclass(frozen=True)
class RunPaths:
    """The files of one run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data_report(self) -> Path:
        return self.root / "data_report.json"

    @property
    def ratings(self) -> Path:
        return self.root / "ratings.parquet"

    @property
    def movie_texts(self) -> Path:
        return self.root / "movie_texts.parquet"

    @property
    def movie_embeddings(self) -> Path:
        return self.root / "movie_embeddings.npz"

    @property
    def examples(self) -> Path:
        return self.root / "examples"

    @property
    def histories(self) -> Path:
        return self.root / "histories.json"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def training(self) -> Path:
        return self.root / "training.json"

    @property
    def query_model(self) -> Path:
        return self.root / "query_model"

    @property
    def candidates(self) -> Path:
        return self.root / "candidates.parquet"

    @property
    def candidate_embeddings(self) -> Path:
        return self.root / "candidate_embeddings.npy"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"


def resolve_paths(config: PipelineConfig) -> PipelineConfig:
    """Make every path absolute, so the saved config means the same anywhere."""
    data = config.data
    return dataclasses.replace(
        config,
        runs_dir=config.runs_dir.resolve(),
        data=dataclasses.replace(
            data,
            data_dir=data.data_dir.resolve(),
            tmdb_path=data.tmdb_path.resolve() if data.tmdb_path else None,
        ),
        embedding=dataclasses.replace(
            config.embedding, cache_dir=config.embedding.cache_dir.resolve()
        ),
    )


def _write_json(path: Path, values: Any) -> None:
    path.write_text(json.dumps(values, indent=2) + "\n")


def _require(path: Path, stage: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"`{path}` is missing; run the `{stage}` stage for this run first "
            f"(`python jobs/{stage}.py --name {path.parent.name}`)."
        )
    return path


def ingest(config: PipelineConfig, paths: RunPaths) -> None:
    """Read and validate MovieLens and TMDB; write clean ratings and movie texts."""
    from recray.data import (
        DataReport,
        build_movie_texts,
        load_movielens,
        load_tmdb,
        log_examples,
    )

    report = DataReport()
    movielens = load_movielens(config.data.data_dir, report)
    tmdb = load_tmdb(config.data.tmdb_path, report) if config.data.tmdb_path else None
    texts = build_movie_texts(movielens, tmdb, config.data.top_tags)

    report.log_summary(logger)
    log_examples(texts, logger)
    _write_json(paths.data_report, report.to_dict())
    if movielens.ratings.num_rows == 0:
        raise ValueError(
            f"No rating of `{config.data.data_dir}` survived validation; "
            f"`{paths.data_report}` counts every dropped row and why."
        )
    pq.write_table(movielens.ratings, paths.ratings)
    pq.write_table(texts, paths.movie_texts)


def embed(config: PipelineConfig, paths: RunPaths) -> None:
    """Embed every movie text (cached on disk) in the order of movie_texts."""
    from recray.embeddings import embed_movie_texts

    texts = pq.read_table(_require(paths.movie_texts, "ingest"))
    result = embed_movie_texts(texts, config.embedding)
    logger.info(
        "Embedded %d movie texts with `%s` (%d dims): %d computed, %d from cache.",
        texts.num_rows,
        result.model,
        result.dim,
        result.num_computed,
        result.num_cached,
    )
    np.savez(
        paths.movie_embeddings,
        movie_id=texts["movie_id"].to_numpy(),
        vectors=result.vectors.astype(np.float32),
    )


def _vocabulary(paths: RunPaths):
    from recray.data.histories import MovieVocabulary

    texts = pq.read_table(_require(paths.movie_texts, "ingest"), columns=["movie_id"])
    return MovieVocabulary(texts["movie_id"].to_numpy())


def histories(config: PipelineConfig, paths: RunPaths) -> None:
    """Cut every user's ratings into padded next-movie examples, split by user."""
    from recray.data.histories import write_examples

    ratings = pq.read_table(_require(paths.ratings, "ingest"))
    stats = write_examples(ratings, _vocabulary(paths), config.data, paths.examples)
    _write_json(paths.histories, stats.to_dict())


def _embedding_table(paths: RunPaths) -> np.ndarray:
    """Movie text embeddings [vocab_size, dim] with the zero padding row first.

    Raises:
        ValueError: The embeddings are of other movies than the vocabulary
            (ingest ran again after embed).
    """
    with np.load(_require(paths.movie_embeddings, "embed")) as saved:
        movie_ids, vectors = saved["movie_id"], saved["vectors"]
    if not np.array_equal(movie_ids, _vocabulary(paths).movie_ids):
        raise ValueError(
            f"`{paths.movie_embeddings}` holds vectors of other movies than "
            f"`{paths.movie_texts}`; rerun the `embed` stage after `ingest`."
        )
    padding = np.zeros((1, vectors.shape[1]), dtype=np.float32)
    return np.concatenate([padding, vectors]).astype(np.float32)


def _training_rating_counts(config: PipelineConfig, paths: RunPaths) -> np.ndarray:
    """How often each vocabulary row was rated by a training user."""
    from recray.data.histories import is_validation_user
    from recray.evaluation.baselines import popularity_scores

    vocabulary = _vocabulary(paths)
    ratings = pq.read_table(paths.ratings, columns=["user_id", "movie_id"])
    held_out = is_validation_user(
        ratings["user_id"].to_numpy(),
        config.data.split_seed,
        config.data.validation_fraction,
    )
    rows = vocabulary.rows(ratings["movie_id"].to_numpy()[~held_out])
    return popularity_scores(rows, vocabulary.size)


def training_inputs(
    config: PipelineConfig, paths: RunPaths
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """What the train stage fits on: the embedding table [vocab_size, dim],
    the training rating counts [vocab_size] and the `train` and `validation`
    example datasets. A Tune trial reads the same."""
    from recray.data.histories import read_examples

    datasets = {
        split: read_examples(_require(paths.examples / split, "histories"))
        for split in ("train", "validation")
    }
    return (
        _embedding_table(paths),
        _training_rating_counts(config, paths),
        datasets,
    )


def train(config: PipelineConfig, paths: RunPaths) -> None:
    """Fit the towers on Ray Train; export the query model and candidate embeddings."""
    import tensorflow as tf

    from recray.data.histories import read_examples
    from recray.model.export import export_query_model
    from recray.model.towers import RetrievalModel
    from recray.training.trainer import load_weights
    from recray.training.trainer import train as fit_towers

    movie_vectors = _embedding_table(paths)
    counts = _training_rating_counts(config, paths)
    datasets = {
        split: read_examples(_require(paths.examples / split, "histories"))
        for split in ("train", "validation")
    }
    # The driver's copy of the model: its summary is logged now, and it takes
    # the trained weights for export afterwards.
    model = RetrievalModel(movie_vectors, config.model, counts)
    model.build_towers(config.data.max_history)
    model.query_model.summary(print_fn=logger.info, expand_nested=True)

    result = fit_towers(
        config.model,
        config.train,
        movie_vectors,
        counts,
        datasets,
        config.data.max_history,
        paths.train,
        seed=config.data.split_seed,
    )
    _write_json(paths.training, result.epochs)

    load_weights(model, result.checkpoint_dir)
    export_query_model(model.query_model, paths.query_model)

    rows = tf.range(movie_vectors.shape[0], dtype=tf.int32)
    candidates = model.candidate_model(rows).numpy()
    candidates[0] = 0.0  # the padding row is no movie
    np.save(paths.candidate_embeddings, candidates)
    texts = pq.read_table(paths.movie_texts, columns=["movie_id", "title"])
    pq.write_table(
        texts.add_column(0, "row", pa.array(np.arange(1, texts.num_rows + 1))),
        paths.candidates,
    )
    logger.info("Exported the query model to %s", paths.query_model)


def evaluate(config: PipelineConfig, paths: RunPaths) -> dict[str, dict[str, float]]:
    """Rank the whole catalogue for every validation example, model and baselines."""
    from recray.data.histories import rated_before, read_examples
    from recray.evaluation.metrics import rank_in_chunks, ranking_metrics
    from recray.model.export import ExportedQueryModel
    from recray.schema import HISTORY_IDS, HISTORY_RATINGS, TARGET_ID

    dataset = read_examples(_require(paths.examples / "validation", "histories"))
    examples = dataset.take_batch(batch_size=dataset.count(), batch_format="numpy")
    limit = config.eval.max_eval_examples
    if limit is not None and limit < len(examples[TARGET_ID]):
        rng = np.random.default_rng(config.data.split_seed)
        chosen = np.sort(rng.choice(len(examples[TARGET_ID]), limit, replace=False))
        examples = {name: column[chosen] for name, column in examples.items()}
    targets = examples[TARGET_ID].astype(np.int64)
    ratings = pq.read_table(paths.ratings)
    excluded = rated_before(ratings, _vocabulary(paths), examples)

    query_model = ExportedQueryModel(_require(paths.query_model, "train"))
    queries = query_model(examples[HISTORY_IDS], examples[HISTORY_RATINGS])
    candidates = np.load(_require(paths.candidate_embeddings, "train"))
    popularity = _training_rating_counts(config, paths)

    scorers: dict[str, Callable[[slice], np.ndarray]] = {
        "model": lambda rows: queries[rows] @ candidates.T,
        "popularity": lambda rows: np.broadcast_to(
            popularity, (len(targets[rows]), len(popularity))
        ),
    }
    metrics = {}
    for name, score in scorers.items():
        started = time.perf_counter()
        ranks = rank_in_chunks(score, targets, excluded)
        metrics[name] = ranking_metrics(ranks, config.eval.ks)
        logger.info("Scored %s in %.1f s", name, time.perf_counter() - started)
    _write_json(paths.metrics, metrics)
    return metrics


def load_metrics(paths: RunPaths) -> dict[str, dict[str, float]]:
    """The metrics an evaluate stage wrote."""
    return json.loads(_require(paths.metrics, "evaluate").read_text())


def format_metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per model, one column per metric."""
    columns = list(next(iter(metrics.values())))
    header = f"{'model':<12}" + "".join(f"{column:>10}" for column in columns)
    lines = [header, "-" * len(header)]
    for name, values in metrics.items():
        cells = "".join(
            f"{values[column]:>10d}"
            if isinstance(values[column], int)
            else f"{values[column]:>10.4f}"
            for column in columns
        )
        lines.append(f"{name:<12}{cells}")
    return "\n".join(lines)


STAGE_FUNCTIONS: dict[str, Callable[[PipelineConfig, RunPaths], Any]] = {
    "ingest": ingest,
    "embed": embed,
    "histories": histories,
    "train": train,
    "evaluate": evaluate,
}


# The settings each stage reads. A stage run on its own must see the settings
# that made the files it reads, or its results would silently mix two configs.
STAGE_SETTINGS = {
    "ingest": ("data.data_dir", "data.tmdb_path", "data.top_tags"),
    "embed": ("embedding",),
    "histories": ("data.max_history", "data.validation_fraction", "data.split_seed"),
    "train": ("model", "train"),
    "evaluate": ("eval",),
}


def _setting(config: PipelineConfig, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def check_earlier_settings(
    config: PipelineConfig, paths: RunPaths, first_stage: str
) -> None:
    """Refuse settings that differ from those the earlier stages ran with.

    Raises:
        ValueError: A setting read by a stage before `first_stage` differs
            from the run's `config.yaml`.
    """
    if not paths.config.is_file():
        return
    saved = load_yaml(PipelineConfig, paths.config)
    for stage in STAGES[: STAGES.index(first_stage)]:
        for dotted in STAGE_SETTINGS[stage]:
            if _setting(saved, dotted) != _setting(config, dotted):
                raise ValueError(
                    f"Run `{paths.root}` ran `{stage}` with `{dotted}` = "
                    f"{_setting(saved, dotted)!r}, not {_setting(config, dotted)!r}. "
                    f"Pass `--config {paths.config}` to reuse its settings, rerun "
                    f"from `{stage}`, or start a new run with another `--name`."
                )


def run(config: PipelineConfig, stages: Sequence[str] = STAGES) -> RunPaths:
    """Run `stages` in order for the run folder of `config`.

    Raises:
        ValueError: An unknown stage name.
    """
    unknown = [stage for stage in stages if stage not in STAGE_FUNCTIONS]
    if unknown or not stages:
        raise ValueError(f"Unknown stages {unknown}; choose from {list(STAGES)}.")
    config = resolve_paths(config)
    paths = RunPaths(config.run_dir)
    check_earlier_settings(config, paths, stages[0])
    paths.root.mkdir(parents=True, exist_ok=True)
    save_yaml(config, paths.config)
    logger.info("Run folder: %s", paths.root)

    needs_ray = {"embed", "histories", "train", "evaluate"}
    if needs_ray.intersection(stages):
        from recray.cluster import init_ray

        init_ray()
    tracker = start_tracking(config, paths)
    try:
        for stage in stages:
            started = time.perf_counter()
            logger.info("Stage %s ...", stage)
            STAGE_FUNCTIONS[stage](config, paths)
            logger.info("Stage %s done in %.1f s", stage, time.perf_counter() - started)
            track_stage(tracker, stage, paths)
    finally:
        if tracker is not None:
            tracker.close()
    return paths


def start_tracking(config: PipelineConfig, paths: RunPaths):
    """A ClearML tracker of the run with its config logged, or None when off."""
    from recray import tracking
    from recray.config import to_dict

    tracker = tracking.start(config.tracking, config.name, paths.root)
    if tracker is not None:
        tracker.log_config(to_dict(config))
        tracker.log_artifact("config", paths.config)
    return tracker


def track_stage(tracker, stage: str, paths: RunPaths) -> None:
    """Log what a finished stage wrote: the data report after `ingest`, the
    per-epoch metrics after `train`, the metrics table after `evaluate`."""
    if tracker is None:
        return
    if stage == "train" and paths.training.is_file():
        tracker.log_epochs(json.loads(paths.training.read_text()))
        tracker.log_artifact("training", paths.training)
    if stage == "evaluate" and paths.metrics.is_file():
        tracker.log_table("validation metrics", load_metrics(paths))
        tracker.log_artifact("metrics", paths.metrics)
    if stage == "ingest" and paths.data_report.is_file():
        tracker.log_artifact("data_report", paths.data_report)
