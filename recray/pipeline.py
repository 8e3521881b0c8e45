"""The main job, stage by stage: MovieLens files to an evaluated model.

Stages talk through files in the run folder, so that each one can run on its
own (jobs/<stage>.py) and a rerun of a late stage does not redo the early
ones:

    ingest     -> data_report.json, ratings.parquet, movie_texts.parquet
    embed      -> movie_embeddings.npz (movie ids and their vectors)
    histories  -> examples/train/, examples/validation/, histories.json
    train      -> train/ (Ray Train checkpoints), training.json,
                  query_model/ (SavedModel), candidates.parquet,
                  candidate_embeddings.npy, candidate_model/ and index/
                  (recray.serving.catalogue lists the serving files)
    evaluate   -> metrics.json

TensorFlow is imported inside the stages that need it, so that ingest, embed
and histories start fast and small.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recray.config import PipelineConfig, load_yaml, save_yaml

if TYPE_CHECKING:
    from recray.data.movielens import MovieLensData

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
    def embedding_plan(self) -> Path:
        return self.root / "embedding_plan.json"

    @property
    def embedding_failures(self) -> Path:
        return self.root / "embedding_failures.jsonl"

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
    def movie_features(self) -> Path:
        """What the train stage fixed of the movie table, for serving: the
        `FeatureSpec` (`recray.data.movie_features`) and the row `width`."""
        return self.root / "movie_features.json"

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

    @property
    def id_two_tower(self) -> Path:
        """The ID two-tower baseline: `train/`, `training.json`,
        `query_model/` and `candidate_embeddings.npy`, as for the model."""
        return self.root / "id_two_tower"

    @property
    def evaluation(self) -> Path:
        """What evaluate chose and saw: EASE's `l2`, the cold-start split."""
        return self.root / "evaluation.json"


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
    report.log_summary(logger)
    _write_json(paths.data_report, report.to_dict())
    if movielens.ratings.num_rows == 0:
        raise ValueError(
            f"No rating of `{config.data.data_dir}` survived validation; "
            f"`{paths.data_report}` counts every dropped row and why."
        )
    tags = _tags_for_texts(config, movielens)
    texts = build_movie_texts(
        dataclasses.replace(movielens, tags=tags), tmdb, config.data.top_tags
    )

    log_examples(texts, logger)
    pq.write_table(movielens.ratings, paths.ratings)
    pq.write_table(texts, paths.movie_texts)


def _tags_for_texts(config: PipelineConfig, movielens: MovieLensData) -> pa.Table:
    """The tag applications movie texts may quote: training users' tags of
    warm movies.

    Tags are behaviour. A validation user's tag would carry held-out
    behaviour into the frozen movie features, and a cold-start movie stands
    for a movie nobody has seen yet, so it has no tags either.
    """
    from recray.data.histories import is_validation_user
    from recray.data.movie_features import column_years

    ratings, tags = movielens.ratings, movielens.tags
    if tags.num_rows == 0:
        return tags
    rating_users = ratings["user_id"].to_numpy()
    held_out = is_validation_user(
        rating_users,
        config.data.split_seed,
        config.data.validation_fraction,
        count=config.data.validation_users,
    )
    by_validation_user = np.isin(tags["user_id"].to_numpy(), rating_users[held_out])

    movies = movielens.movies.sort_by("movie_id")
    cold = _cold_split(
        movies["movie_id"].to_numpy(),
        column_years(movies),
        ratings["movie_id"].to_numpy(),
        config.train.cold_start_fraction,
    )
    vocabulary = _vocabulary_of(movies["movie_id"].to_numpy())
    on_cold_movie = cold.is_cold[vocabulary.rows(tags["movie_id"].to_numpy())]

    keep = ~by_validation_user & ~on_cold_movie
    logger.info(
        "Movie texts quote training users' tags of warm movies only: %d of %d "
        "tag applications left out (%d by validation users, %d of cold-start "
        "movies).",
        int((~keep).sum()),
        tags.num_rows,
        int(by_validation_user.sum()),
        int(on_cold_movie.sum()),
    )
    return tags.filter(pa.array(keep))


def embed(config: PipelineConfig, paths: RunPaths) -> None:
    """Embed every movie text (cached on disk) in the order of movie_texts.

    With `embedding.dry_run`, only write `embedding_plan.json` (texts, tokens,
    requests, cost, minutes) and call nothing. Texts that fail for good are
    listed in `embedding_failures.jsonl`.
    """
    from recray.embeddings import embed_movie_texts, plan_embedding

    texts = pq.read_table(_require(paths.movie_texts, "ingest"))
    if config.embedding.dry_run:
        plan = plan_embedding(texts, config.embedding)
        _write_json(paths.embedding_plan, plan.to_dict())
        logger.info("Dry run, nothing embedded:\n%s", plan.summary())
        return
    result = embed_movie_texts(
        texts, config.embedding, failures_path=paths.embedding_failures
    )
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
    from recray.serving.similar import log_similar_examples

    log_similar_examples(texts["title"].to_pylist(), result.vectors, logger)


def _vocabulary_of(movie_ids: np.ndarray):
    from recray.data.vocabulary import MovieVocabulary

    return MovieVocabulary(np.asarray(movie_ids))


def _vocabulary(paths: RunPaths):
    texts = pq.read_table(_require(paths.movie_texts, "ingest"), columns=["movie_id"])
    return _vocabulary_of(texts["movie_id"].to_numpy())


def histories(config: PipelineConfig, paths: RunPaths) -> None:
    """Cut every user's ratings into padded next-movie examples, split by user."""
    from recray.data.histories import write_examples

    ratings = pq.read_table(_require(paths.ratings, "ingest"))
    stats = write_examples(ratings, _vocabulary(paths), config.data, paths.examples)
    _write_json(paths.histories, stats.to_dict())


def _text_table(paths: RunPaths) -> np.ndarray:
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


def has_years_and_genres(texts_path: Path) -> bool:
    """Whether a `movie_texts.parquet` has the `year` and `genres` columns
    (those written before the towers read them have not)."""
    return {"year", "genres"} <= set(pq.read_schema(texts_path).names)


def read_years_and_genres(texts_path: Path) -> tuple[np.ndarray, list[list[str]]]:
    """Each movie's release year (0 where unknown) and genres, in file order.

    Raises:
        ValueError: The file predates the `year` and `genres` columns.
    """
    if not has_years_and_genres(texts_path):
        raise ValueError(
            f"`{texts_path}` has no `year` and `genres` columns: it was written "
            "before the towers read them. Rerun the `ingest` stage (and those "
            "after it) for this run."
        )
    from recray.data.movie_features import column_years

    table = pq.read_table(texts_path, columns=["year", "genres"])
    return column_years(table), table["genres"].to_pylist()


def feature_spec(config: PipelineConfig, years: np.ndarray, counts: np.ndarray):
    """The `recray.data.movie_features.FeatureSpec` of this run's settings;
    years clip at the latest movie with training ratings.

    Args:
        config: The run's settings.
        years: [num_movies] release years of the vocabulary's movies.
        counts: [vocab_size] training ratings per vocabulary row.
    """
    from recray.data.movie_features import FeatureSpec, last_training_year

    last_year = None
    if config.model.year_features:
        last_year = last_training_year(years, counts[1:])
    return FeatureSpec(
        config.model.year_features, config.model.genre_features, last_year
    )


def movie_table(
    config: PipelineConfig, paths: RunPaths, counts: np.ndarray
) -> np.ndarray:
    """The towers' frozen movie table [vocab_size, width], padding row first:
    text embeddings followed by the year and genre features the model config
    asks for (`recray.data.movie_features`).

    Args:
        config: The run's settings.
        paths: The run folder.
        counts: [vocab_size] training ratings per vocabulary row.
    """
    from recray.data.movie_features import tower_inputs, warn_of_unknown_genres

    text = _text_table(paths)
    years, genres = read_years_and_genres(paths.movie_texts)
    spec = feature_spec(config, years, counts)
    if spec.genre_features:
        warn_of_unknown_genres(genres)
    rows = tower_inputs(text[1:], years, genres, spec)
    padding = np.zeros((1, rows.shape[1]), dtype=np.float32)
    return np.concatenate([padding, rows])


def _cold_split(
    movie_ids: np.ndarray,
    years: np.ndarray,
    rating_movie_ids: np.ndarray,
    fraction: float,
):
    """Cold-start movies of sorted `movie_ids` with title `years` (0 for
    none), from the movie id of every rating."""
    from recray.data.cold_start import choose_cold_movies

    rows = _vocabulary_of(movie_ids).rows(rating_movie_ids)
    return choose_cold_movies(np.concatenate([[0], years]), rows, fraction)


def _users_of(user_ids: np.ndarray, is_cold_target: np.ndarray) -> dict:
    """How many users the evaluated examples come from, and how much the
    cold-start rows lean on a few of them: their examples are a user's
    sessions, so far from independent."""
    _, cold_counts = np.unique(user_ids[is_cold_target], return_counts=True)
    largest_first = np.sort(cold_counts)[::-1] / max(cold_counts.sum(), 1)
    return {
        "all": int(len(np.unique(user_ids))),
        "cold": int(len(cold_counts)),
        "cold_share_of_largest_user": round(float(largest_first[:1].sum()), 4),
        "cold_share_of_largest_8_users": round(float(largest_first[:8].sum()), 4),
    }


def _cold_start(config: PipelineConfig, paths: RunPaths):
    """The run's cold-start movies, from the title years and all ratings."""
    years, _ = read_years_and_genres(paths.movie_texts)
    ratings = pq.read_table(paths.ratings, columns=["movie_id"])
    return _cold_split(
        _vocabulary(paths).movie_ids,
        years,
        ratings["movie_id"].to_numpy(),
        config.train.cold_start_fraction,
    )


def _training_ratings(config: PipelineConfig, paths: RunPaths) -> pa.Table:
    """Training users' ratings of warm movies, with their vocabulary `row`."""
    from recray.data.histories import is_validation_user

    vocabulary = _vocabulary(paths)
    ratings = pq.read_table(
        _require(paths.ratings, "ingest"),
        columns=["user_id", "movie_id", "timestamp"],
    )
    held_out = is_validation_user(
        ratings["user_id"].to_numpy(),
        config.data.split_seed,
        config.data.validation_fraction,
        count=config.data.validation_users,
    )
    rows = vocabulary.rows(ratings["movie_id"].to_numpy())
    keep = ~held_out & ~_cold_start(config, paths).is_cold[rows]
    return ratings.append_column("row", pa.array(rows)).filter(pa.array(keep))


def _training_rating_counts(config: PipelineConfig, paths: RunPaths) -> np.ndarray:
    """How often each vocabulary row was rated by a training user (cold-start
    movies never are)."""
    from recray.evaluation.baselines import popularity_scores

    rows = _training_ratings(config, paths)["row"].to_numpy()
    return popularity_scores(rows, _vocabulary(paths).size)


def _training_sequences(config: PipelineConfig, paths: RunPaths) -> list[np.ndarray]:
    """Per training user, the warm vocabulary rows rated, in time order."""
    ratings = _training_ratings(config, paths)
    users = ratings["user_id"].to_numpy()
    rows = ratings["row"].to_numpy()
    order = np.lexsort(
        (ratings["movie_id"].to_numpy(), ratings["timestamp"].to_numpy(), users)
    )
    users, rows = users[order], rows[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    return np.split(rows, starts[1:]) if len(rows) else []


def training_inputs(
    config: PipelineConfig, paths: RunPaths
) -> tuple[np.ndarray, np.ndarray, dict[str, Any], np.ndarray]:
    """What the train stage fits on: the movie table [vocab_size, width]
    (`movie_table`), the training rating counts [vocab_size], the `train`
    and `validation` example datasets without cold-start targets, and the
    vocabulary rows that may serve as catalogue negatives (the warm movies).
    A Tune trial reads the same."""
    from recray.data.cold_start import without_cold_targets
    from recray.data.histories import read_examples
    from recray.schema import TARGET_ID

    cold = _cold_start(config, paths)
    datasets = {
        split: read_examples(_require(paths.examples / split, "histories"))
        for split in ("train", "validation")
    }
    if cold.num_cold:
        for split in datasets:
            targets = pq.read_table(paths.examples / split, columns=[TARGET_ID])
            dropped = int(cold.is_cold[targets[TARGET_ID].to_numpy()].sum())
            logger.info(
                "Cold-start split: %d of %d %s examples have a cold target and "
                "are left out of training (the evaluate stage scores them apart)",
                dropped,
                targets.num_rows,
                split,
            )
        datasets = {
            split: dataset.map_batches(
                without_cold_targets,
                fn_kwargs={"is_cold": cold.is_cold},
                batch_format="numpy",
            )
            for split, dataset in datasets.items()
        }
    negative_rows = np.flatnonzero(~cold.is_cold)[1:].astype(np.int32)
    counts = _training_rating_counts(config, paths)
    return movie_table(config, paths, counts), counts, datasets, negative_rows


def _fit_and_export(
    config: PipelineConfig,
    model_config,
    movie_vectors: np.ndarray,
    counts: np.ndarray,
    datasets: dict,
    negative_rows: np.ndarray,
    folder: Path,
    epochs: int,
    serving: bool = False,
    movie_features: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Train one retrieval model on Ray Train and export it into `folder`:
    `train/`, `query_model/`, `candidate_embeddings.npy`, and with `serving`
    the candidate model and index that `recray recommend` loads, after
    `movie_features` is written to `movie_features.json`; return its
    epochs."""
    import tensorflow as tf

    from recray.model.export import export_query_model
    from recray.model.towers import RetrievalModel
    from recray.training.trainer import load_weights
    from recray.training.trainer import train as fit_towers

    # The driver's copy of the model: its summary is logged now, and it takes
    # the trained weights for export afterwards.
    model = RetrievalModel(movie_vectors, model_config, counts, negative_rows)
    model.build_towers(config.data.max_history)
    model.query_model.summary(print_fn=logger.info, expand_nested=True)

    result = fit_towers(
        model_config,
        dataclasses.replace(config.train, epochs=epochs),
        movie_vectors,
        counts,
        datasets,
        config.data.max_history,
        folder / "train",
        seed=config.data.split_seed,
        negative_rows=negative_rows,
    )
    load_weights(model, result.checkpoint_dir)
    export_query_model(model.query_model, folder / "query_model")
    if movie_features is not None:
        # Written with the models it describes, never before training ends.
        _write_json(RunPaths(folder).movie_features, movie_features)
    if serving:
        from recray.serving.index import export_serving  # candidate model and index

        export_serving(model.candidate_model, folder)
    rows = tf.range(movie_vectors.shape[0], dtype=tf.int32)
    candidates = model.candidate_model(rows).numpy()
    candidates[0] = 0.0  # the padding row is no movie
    np.save(folder / "candidate_embeddings.npy", candidates)
    return result.epochs


def train(config: PipelineConfig, paths: RunPaths) -> None:
    """Fit the towers on Ray Train; export the query model and candidate
    embeddings. With `id_baseline`, the ID two-tower is trained the same way
    into `id_two_tower/`. Cold-start movies are kept out of both."""
    movie_vectors, counts, datasets, negative_rows = training_inputs(config, paths)
    # What serving needs to build the rows of any movie as training did.
    years, _ = read_years_and_genres(paths.movie_texts)
    movie_features = {
        **dataclasses.asdict(feature_spec(config, years, counts)),
        "width": int(movie_vectors.shape[1]),
    }
    # Serving feeds rows of the frozen movie table to the exported towers,
    # which is only what they were trained on with frozen text features.
    servable = (
        config.model.movie_features == "text" and not config.model.trainable_embeddings
    )
    if not servable:
        from recray.serving.catalogue import ServingPaths

        logger.warning(
            "No candidate model or index for `recommend`: serving needs "
            "`--movie-features text` with frozen text embeddings."
        )
        # An earlier run of this name may have left some, for other towers.
        serving = ServingPaths(paths.root)
        for folder in (serving.candidate_model, serving.index):
            shutil.rmtree(folder, ignore_errors=True)

    epochs = _fit_and_export(
        config,
        config.model,
        movie_vectors,
        counts,
        datasets,
        negative_rows,
        paths.root,
        config.train.epochs,
        serving=servable,
        movie_features=movie_features,
    )
    _write_json(paths.training, epochs)
    texts = pq.read_table(paths.movie_texts, columns=["movie_id", "title"])
    pq.write_table(
        texts.add_column(0, "row", pa.array(np.arange(1, texts.num_rows + 1))),
        paths.candidates,
    )
    logger.info("Exported the query model to %s", paths.query_model)

    if config.train.id_baseline:
        paths.id_two_tower.mkdir(exist_ok=True)
        id_config = dataclasses.replace(
            config.model, movie_features="id", trainable_embeddings=False
        )
        id_epochs = _fit_and_export(
            config,
            id_config,
            movie_vectors,
            counts,
            datasets,
            negative_rows,
            paths.id_two_tower,
            config.train.id_baseline_epochs or config.train.epochs,
        )
        _write_json(paths.id_two_tower / "training.json", id_epochs)


def evaluate(config: PipelineConfig, paths: RunPaths) -> dict[str, dict[str, float]]:
    """Rank the whole catalogue for every validation example, model and baselines.

    Rows of `metrics.json`: each scorer on all validation examples (`model`,
    `popularity`, `ease`, `id_two_tower`), then on the examples whose target
    is a warm movie (`warm:<name>`) and a cold-start movie (`cold:<name>`).
    Id-based scorers rank a movie no training user rated lowest, so they hit
    no cold-start target. `evaluation.json` records EASE's choice of `l2`,
    the cold-start split and how many users the examples come from.
    """
    from recray.data.cold_start import mask_cold_history
    from recray.data.histories import rated_before, read_examples
    from recray.evaluation.baselines import choose_ease
    from recray.evaluation.metrics import (
        rank_in_chunks,
        ranking_metrics,
        seeded_sample,
    )
    from recray.model.export import ExportedQueryModel
    from recray.schema import HISTORY_IDS, HISTORY_RATINGS, TARGET_ID, USER_ID

    dataset = read_examples(_require(paths.examples / "validation", "histories"))
    examples = dataset.take_batch(batch_size=dataset.count(), batch_format="numpy")
    examples = seeded_sample(
        examples, config.eval.max_eval_examples, config.data.split_seed
    )
    targets = examples[TARGET_ID].astype(np.int64)
    ratings = pq.read_table(paths.ratings)
    vocabulary = _vocabulary(paths)
    excluded = rated_before(ratings, vocabulary, examples)
    cold = _cold_start(config, paths)
    popularity = _training_rating_counts(config, paths)
    unseen = popularity == 0  # no training rating: id-based scorers know nothing

    def two_tower(folder: Path, history: dict, id_based: bool):
        query_model = ExportedQueryModel(_require(folder / "query_model", "train"))
        queries = query_model(history[HISTORY_IDS], history[HISTORY_RATINGS])
        candidates = np.load(_require(folder / "candidate_embeddings.npy", "train"))

        def score(rows: slice) -> np.ndarray:
            scores = queries[rows] @ candidates.T
            if id_based:
                scores[:, unseen] = -np.inf
            return scores

        return score

    popularity_scores = np.where(unseen, -np.inf, popularity)
    scorers: dict[str, Callable[[slice], np.ndarray]] = {
        "model": two_tower(paths.root, examples, id_based=False),
        "popularity": lambda rows: np.broadcast_to(
            popularity_scores, (len(targets[rows]), len(popularity))
        ),
    }
    info: dict[str, Any] = {"cold_start": cold.to_dict()}
    if config.eval.ease:
        started = time.perf_counter()
        ease, grid = choose_ease(
            _training_sequences(config, paths),
            vocabulary.size,
            config.eval.ease_l2_grid,
            seed=config.data.split_seed,
        )
        info["ease"] = {"l2": ease.l2, "hr@100_by_l2": grid}
        logger.info(
            "Fitted EASE (l2=%g) in %.1f s", ease.l2, time.perf_counter() - started
        )
        scorers["ease"] = lambda rows: ease.scores(excluded[rows])
    # The setting, not the folder: an earlier run of this name may have left one.
    if config.train.id_baseline and (paths.id_two_tower / "query_model").is_dir():
        id_history = mask_cold_history(examples, cold.is_cold)
        scorers["id_two_tower"] = two_tower(paths.id_two_tower, id_history, True)

    is_cold_target = cold.is_cold[targets]
    info["examples"] = {
        "all": int(len(targets)),
        "warm": int((~is_cold_target).sum()),
        "cold": int(is_cold_target.sum()),
    }
    info["users"] = _users_of(examples[USER_ID], is_cold_target)
    metrics: dict[str, dict[str, float]] = {}
    subsets: dict[str, dict[str, float]] = {}
    for name, score in scorers.items():
        started = time.perf_counter()
        ranks = rank_in_chunks(score, targets, excluded)
        metrics[name] = ranking_metrics(ranks, config.eval.ks)
        for subset, selected in (("warm", ~is_cold_target), ("cold", is_cold_target)):
            if selected.any():
                subsets[f"{subset}:{name}"] = ranking_metrics(
                    ranks[selected], config.eval.ks
                )
        logger.info("Scored %s in %.1f s", name, time.perf_counter() - started)
    metrics.update(subsets)
    _write_json(paths.metrics, metrics)
    _write_json(paths.evaluation, info)
    return metrics


def load_metrics(paths: RunPaths) -> dict[str, dict[str, float]]:
    """The metrics an evaluate stage wrote."""
    return json.loads(_require(paths.metrics, "evaluate").read_text())


def format_metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per model, one column per metric."""
    columns = list(next(iter(metrics.values())))
    width = max(12, *(len(name) + 2 for name in metrics))
    header = f"{'model':<{width}}" + "".join(f"{column:>10}" for column in columns)
    lines = [header, "-" * len(header)]
    for name, values in metrics.items():
        cells = "".join(
            f"{values[column]:>10d}"
            if isinstance(values[column], int)
            else f"{values[column]:>10.4f}"
            for column in columns
        )
        lines.append(f"{name:<{width}}{cells}")
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
    # The split decides whose tags the movie texts may quote.
    "ingest": (
        "data.data_dir",
        "data.tmdb_path",
        "data.top_tags",
        "data.validation_fraction",
        "data.split_seed",
        "data.validation_users",
        "train.cold_start_fraction",
    ),
    # What decides the vectors; limits, retries, cache folder and dry runs
    # do not.
    "embed": (
        "embedding.provider",
        "embedding.embedding_model",
        "embedding.dimensions",
    ),
    "histories": (
        "data.max_history",
        "data.validation_fraction",
        "data.split_seed",
        "data.validation_users",
        "data.examples_per_shard",
    ),
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

    needs_ray = {"histories", "train", "evaluate"}
    if not config.embedding.dry_run:
        needs_ray.add("embed")
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
            if stage == "embed" and config.embedding.dry_run:
                logger.info("Dry run: stopping after the embed plan")
                break
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
