"""Watch histories: from ratings to padded next-movie examples, with Ray Data.

Each user's ratings are put in time order (ties broken by movie id). Every
rating after the first becomes one example: the target is that movie, the
history is the movies before it (the latest `max_history`, oldest first,
padded on the right with `PAD_ID`), and each history rating is centred on the
mean of all the user's ratings before the target. Only the past is used, so
an example carries nothing of what the user did next, and a live user's
history is centred the same way at serving time.

Users, not examples, are split between training and validation, by a seeded
hash of the user id: a user's split never depends on the data's order or on
the worker count. With `validation_fraction` it does not depend on the other
users either; with `validation_users` (a count, e.g. ml-25m's reference of
20,000) the users with the smallest hashes are held out.

`write_examples` builds the examples streaming, in bounded memory: the
driver sorts the ratings once (a few int arrays, never the padded examples)
and cuts each split into shards of equal size (at most one example apart);
Ray Data tasks build one shard each, a row group at a time, and write it as
`<split>/shard-NNNNN.parquet`. A user's examples may span two shards: each
task also reads the history before its first example.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from recray.config import DataConfig
from recray.data.vocabulary import MovieVocabulary
from recray.schema import (
    EXAMPLE_COLUMNS,
    HISTORY_IDS,
    HISTORY_RATINGS,
    PAD_ID,
    POSITION,
    TARGET_ID,
    USER_ID,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation")


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """A fast, well-mixed 64-bit hash (Steele et al., SplitMix64)."""
    with np.errstate(over="ignore"):
        values = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return values ^ (values >> np.uint64(31))


def _user_uniform(user_ids: np.ndarray, seed: int) -> np.ndarray:
    """A seeded uniform number in [0, 1) per user id, [n] float64."""
    seed_hash = _splitmix64(np.array([seed], dtype=np.uint64))
    hashed = _splitmix64(np.asarray(user_ids, dtype=np.uint64) ^ seed_hash)
    return (hashed >> np.uint64(11)).astype(np.float64) / float(2**53)


def is_validation_user(
    user_ids: np.ndarray, seed: int, fraction: float, count: int | None = None
) -> np.ndarray:
    """Whether each user is held out, [n] bool, from a seeded hash of the id.

    Args:
        user_ids: User ids [n], repeats allowed (one per rating, say).
        seed: Seed of the hash.
        fraction: Share of users held out, when `count` is None.
        count: Hold out exactly this many distinct users (all when fewer):
            those with the smallest hashes, so the choice depends on the set
            of users and the seed only, never on order or worker count.

    Raises:
        ValueError: `fraction` is outside [0, 1) or `count` is negative.
    """
    uniform = _user_uniform(user_ids, seed)
    if count is not None:
        if count < 0:
            raise ValueError(
                f"`validation_users` must be >= 0, got {count}; ml-25m's "
                "reference holds out 20000."
            )
        distinct = np.unique(np.asarray(user_ids))
        if count >= distinct.size:
            return np.ones(len(uniform), dtype=bool)
        if count == 0:
            return np.zeros(len(uniform), dtype=bool)
        # Ties between hashes are broken by the user id.
        order = np.lexsort((distinct, _user_uniform(distinct, seed)))
        chosen = distinct[order[:count]]
        return np.isin(np.asarray(user_ids), chosen)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(
            f"`validation_fraction` must be in [0, 1), got {fraction}; "
            "0.2 holds out a fifth of the users."
        )
    return uniform < fraction


def validation_mask(user_ids: np.ndarray, config: DataConfig) -> np.ndarray:
    """`is_validation_user` with the split settings of `config`."""
    return is_validation_user(
        user_ids,
        config.split_seed,
        config.validation_fraction,
        count=config.validation_users,
    )


def chronological_order(timestamps: np.ndarray, movie_ids: np.ndarray) -> np.ndarray:
    """Indices that put one user's ratings in time order, ties by movie id."""
    return np.lexsort((movie_ids, timestamps))


def user_examples(
    ratings: dict[str, np.ndarray], vocabulary: MovieVocabulary, max_history: int
) -> dict[str, np.ndarray]:
    """All next-movie examples of one user's ratings.

    Args:
        ratings: One user's `user_id`, `movie_id`, `rating`, `timestamp`, [n].
        vocabulary: Movie id to embedding row mapping.
        max_history: Length of each padded history.

    Returns:
        Columns `recray.schema.EXAMPLE_COLUMNS`, n - 1 rows; the histories
        are [n - 1, max_history].
    """
    order = chronological_order(ratings["timestamp"], ratings["movie_id"])
    movies = vocabulary.rows(ratings["movie_id"][order])
    stars = ratings["rating"][order].astype(np.float64)
    count = len(movies)
    positions = np.arange(1, count)  # every rating but the first is a target

    # Mean of the ratings strictly before each target.
    mean_before = np.cumsum(stars)[positions - 1] / positions

    lengths = np.minimum(positions, max_history)
    starts = positions - lengths
    offsets = np.arange(max_history)
    valid = offsets[np.newaxis, :] < lengths[:, np.newaxis]  # [n - 1, max_history]
    source = np.where(valid, starts[:, np.newaxis] + offsets, 0)

    history_ids = np.where(valid, movies[source], PAD_ID).astype(np.int32)
    centred = stars[source] - mean_before[:, np.newaxis]
    history_ratings = np.where(valid, centred, 0.0).astype(np.float32)
    user_id = ratings["user_id"][:1].repeat(len(positions)).astype(np.int64)
    return {
        USER_ID: user_id,
        POSITION: positions.astype(np.int32),
        HISTORY_IDS: history_ids,
        HISTORY_RATINGS: history_ratings,
        TARGET_ID: movies[positions].astype(np.int32),
    }


def examples_of_sorted(
    user_ids: np.ndarray,
    movie_rows: np.ndarray,
    stars2: np.ndarray,
    max_history: int,
    first_target: int = 0,
) -> dict[str, np.ndarray]:
    """The examples of ratings sorted by user and time, vectorised over users.

    Gives what `user_examples` gives for each user, in the same order, but
    for many users at once. The ratings must hold each user's ratings from
    the first on; targets before row `first_target` are left out (their user
    was partly written by the shard before).

    Args:
        user_ids: User of each rating [n], users contiguous.
        movie_rows: Vocabulary row of each rating [n], chronological per user.
        stars2: Twice each rating [n] (an integer, so sums are exact).
        max_history: Length of each padded history.
        first_target: First row that may be a target.

    Returns:
        Columns `recray.schema.EXAMPLE_COLUMNS`; histories [m, max_history].
    """
    count = len(user_ids)
    index = np.arange(count)
    starts = np.ones(count, dtype=bool)
    starts[1:] = user_ids[1:] != user_ids[:-1]
    user_start = np.maximum.accumulate(np.where(starts, index, 0))
    stars2 = stars2.astype(np.int64)
    total = np.cumsum(stars2)
    before_user = total[user_start] - stars2[user_start]

    targets = index[(~starts) & (index >= first_target)]
    positions = targets - user_start[targets]
    # Exact integer sums: the same mean whatever the chunking.
    mean_before = (total[targets] - stars2[targets] - before_user[targets]) / (
        2.0 * positions
    )
    lengths = np.minimum(positions, max_history)
    offsets = np.arange(max_history)
    valid = offsets[np.newaxis, :] < lengths[:, np.newaxis]
    source = np.where(valid, (targets - lengths)[:, np.newaxis] + offsets, 0)
    history_ids = np.where(valid, movie_rows[source], PAD_ID).astype(np.int32)
    centred = stars2[source] / 2.0 - mean_before[:, np.newaxis]
    history_ratings = np.where(valid, centred, 0.0).astype(np.float32)
    return {
        USER_ID: user_ids[targets].astype(np.int64),
        POSITION: positions.astype(np.int32),
        HISTORY_IDS: history_ids,
        HISTORY_RATINGS: history_ratings,
        TARGET_ID: movie_rows[targets].astype(np.int32),
    }


@dataclass(frozen=True)
class HistoryStats:
    """What the histories stage wrote.

    Attributes:
        users: Users per split.
        examples: Examples per split.
        users_without_examples: Users with a single rating (no example).
        shards: Parquet shards per split.
        shard_examples: Fewest and most examples of a shard, per split.
    """

    users: dict[str, int]
    examples: dict[str, int]
    users_without_examples: int
    shards: dict[str, int] | None = None
    shard_examples: dict[str, list[int]] | None = None

    def to_dict(self) -> dict:
        values = {
            "users": self.users,
            "examples": self.examples,
            "users_without_examples": self.users_without_examples,
        }
        if self.shards is not None:
            values["shards"] = self.shards
            values["shard_examples"] = self.shard_examples
        return values


@dataclass(frozen=True)
class _ShardPlan:
    """Rows [row_start, row_stop) of the sorted ratings build one shard."""

    split: str
    shard: int
    row_start: int
    first_target: int
    row_stop: int
    examples: int


def sorted_ratings(
    ratings: pa.Table, vocabulary: MovieVocabulary, config: DataConfig
) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, int]], dict[str, int]]:
    """Sort the ratings by split, user (in seeded hash order) and time.

    Validation users come first; within a split users are in the order of a
    seeded hash, so that shards mix users; each user's ratings are in time
    order (ties by movie id).

    Returns:
        `user_id` [n] int64, `movie_row` [n] int32 and `stars2` [n] int8 (twice
        the rating), sorted; the row range of each split; users per split.
    """
    user_ids = ratings.column(USER_ID).to_numpy()
    held_out = validation_mask(user_ids, config)
    # Order of users: the split, then a seeded hash (a second seed, so that
    # the order is independent of which users are held out).
    rank = _user_uniform(user_ids, config.split_seed + 1)
    order = np.lexsort(
        (
            ratings.column("movie_id").to_numpy(),
            ratings.column("timestamp").to_numpy(),
            user_ids,
            rank,
            ~held_out,
        )
    )
    del rank
    arrays = {
        USER_ID: user_ids[order],
        "movie_row": vocabulary.rows(ratings.column("movie_id").to_numpy()[order]),
        "stars2": np.round(
            ratings.column("rating").to_numpy()[order].astype(np.float64) * 2
        ).astype(np.int8),
    }
    validation_rows = int(held_out.sum())
    del order
    ranges = {
        "validation": (0, validation_rows),
        "train": (validation_rows, len(user_ids)),
    }
    users = {}
    for split, (start, stop) in ranges.items():
        split_users = arrays[USER_ID][start:stop]
        users[split] = int(
            (split_users[1:] != split_users[:-1]).sum() + 1 if stop > start else 0
        )
    return arrays, ranges, users


def plan_shards(
    user_ids: np.ndarray, split: str, start: int, stop: int, examples_per_shard: int
) -> list[_ShardPlan]:
    """Cut rows [start, stop) of the sorted ratings into shards of equal size.

    Every rating but a user's first is a target; the targets are cut into
    `ceil(targets / examples_per_shard)` runs whose sizes differ by at most
    one, and each run reads from the first rating of its first user.
    """
    users = user_ids[start:stop]
    is_first = np.ones(users.size, dtype=bool)
    is_first[1:] = users[1:] != users[:-1]
    target_rows = np.flatnonzero(~is_first)
    total = target_rows.size
    if total == 0:
        return []
    shards = max(1, math.ceil(total / examples_per_shard))
    bounds = [total * k // shards for k in range(shards + 1)]
    user_start = np.maximum.accumulate(np.where(is_first, np.arange(users.size), 0))
    plans = []
    for shard in range(shards):
        first, last = target_rows[bounds[shard]], target_rows[bounds[shard + 1] - 1]
        plans.append(
            _ShardPlan(
                split=split,
                shard=shard,
                row_start=start + int(user_start[first]),
                first_target=start + int(first),
                row_stop=start + int(last) + 1,
                examples=bounds[shard + 1] - bounds[shard],
            )
        )
    return plans


# Examples per Parquet row group: bounds each task's memory to a few
# row groups' worth of padded histories.
ROW_GROUP_EXAMPLES = 65_536


def examples_table(columns: dict[str, np.ndarray]) -> pa.Table:
    """Examples as a table, 2-D histories as Ray tensor columns (as Ray writes)."""
    from ray.data.extensions import ArrowTensorArray

    return pa.table(
        {
            name: ArrowTensorArray.from_numpy(columns[name])
            if columns[name].ndim == 2
            else pa.array(columns[name])
            for name in EXAMPLE_COLUMNS
        }
    )


def example_schema(max_history: int) -> pa.Schema:
    """Parquet schema of the examples of `write_shard`."""
    empty = {
        USER_ID: np.zeros(0, np.int64),
        POSITION: np.zeros(0, np.int32),
        HISTORY_IDS: np.zeros((0, max_history), np.int32),
        HISTORY_RATINGS: np.zeros((0, max_history), np.float32),
        TARGET_ID: np.zeros(0, np.int32),
    }
    return examples_table(empty).schema


def write_shard(
    arrays: dict[str, np.ndarray],
    row_start: int,
    first_target: int,
    row_stop: int,
    max_history: int,
    path: Path,
) -> int:
    """Build and write the examples of one shard, a row group at a time.

    Args:
        arrays: Sorted `user_id`, `movie_row` and `stars2` of `sorted_ratings`.
        row_start: First rating of the shard's first user.
        first_target: First rating that is a target of this shard.
        row_stop: One past the shard's last target.
        max_history: Length of each padded history.
        path: Parquet file to write.

    Returns:
        Examples written.
    """
    schema = example_schema(max_history)
    users = arrays[USER_ID][row_start:row_stop]
    is_first = np.ones(users.size, dtype=bool)
    is_first[1:] = users[1:] != users[:-1]
    user_start = np.maximum.accumulate(np.where(is_first, np.arange(users.size), 0))
    written = 0
    with pq.ParquetWriter(str(path), schema) as writer:
        chunk_start = first_target - row_start
        while chunk_start < users.size:
            chunk_stop = min(users.size, chunk_start + ROW_GROUP_EXAMPLES)
            # Read back to the first rating of the chunk's first user.
            read_start = row_start + int(user_start[chunk_start])
            columns = examples_of_sorted(
                arrays[USER_ID][read_start : row_start + chunk_stop],
                arrays["movie_row"][read_start : row_start + chunk_stop],
                arrays["stars2"][read_start : row_start + chunk_stop],
                max_history,
                first_target=row_start + chunk_start - read_start,
            )
            writer.write_table(examples_table(columns))
            written += len(columns[USER_ID])
            chunk_start = chunk_stop
    return written


def write_examples(
    ratings: pa.Table,
    vocabulary: MovieVocabulary,
    config: DataConfig,
    output_dir: Path,
) -> HistoryStats:
    """Build every user's examples with Ray Data and write them as Parquet shards.

    Streams: the padded examples of one row group per task are in memory at
    a time, never all of them. Each split gets shards of equal size (at
    most one example apart), written in a seeded mix of users; training
    mixes further with a shuffle buffer at read time.

    Args:
        ratings: Clean ratings: `user_id`, `movie_id`, `rating`, `timestamp`.
        vocabulary: Movie id to embedding row mapping.
        config: `max_history`, the split settings and `examples_per_shard`.
        output_dir: Gets `train/` and `validation/` folders of Parquet files.

    Returns:
        Users, examples and shards per split.

    Raises:
        ValueError: No training user has two ratings.
    """
    started = time.perf_counter()
    arrays, ranges, users = sorted_ratings(ratings, vocabulary, config)
    logger.info(
        "Sorted %d ratings in %.1f s.",
        len(arrays[USER_ID]),
        time.perf_counter() - started,
    )
    all_users = arrays[USER_ID]
    is_first = np.ones(all_users.size, dtype=bool)
    is_first[1:] = all_users[1:] != all_users[:-1]
    is_last = np.ones(all_users.size, dtype=bool)
    is_last[:-1] = is_first[1:]
    users_without_examples = int((is_first & is_last).sum())
    del is_first, is_last
    if users_without_examples:
        logger.warning(
            "%d users have a single rating and give no example.",
            users_without_examples,
        )

    plans = [
        plan
        for split, (start, stop) in ranges.items()
        for plan in plan_shards(
            all_users, split, start, stop, config.examples_per_shard
        )
    ]
    for split in SPLITS:
        # Ray appends to a folder; stale shards of an earlier run must go.
        shutil.rmtree(output_dir / split, ignore_errors=True)
        (output_dir / split).mkdir(parents=True)

    written: dict[tuple[str, int], int] = {}
    if plans:
        started = time.perf_counter()
        reference = ray.put(arrays)
        items = [
            {
                "split": plan.split,
                "shard": plan.shard,
                "row_start": plan.row_start,
                "first_target": plan.first_target,
                "row_stop": plan.row_stop,
                "path": str(
                    (
                        output_dir / plan.split / f"shard-{plan.shard:05d}.parquet"
                    ).resolve()
                ),
            }
            for plan in plans
        ]
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        results = (
            ray.data.from_items(items, override_num_blocks=len(items))
            .map_batches(
                _write_shards,
                batch_size=1,
                fn_kwargs={"arrays": [reference], "max_history": config.max_history},
                compute=ray.data.TaskPoolStrategy(size=min(cpus, len(items))),
            )
            .take_all()
        )
        del reference
        written = {
            (row["split"], int(row["shard"])): int(row["rows"]) for row in results
        }
        logger.info(
            "Wrote %d shards in %.1f s (%.1f s inside the tasks).",
            len(results),
            time.perf_counter() - started,
            sum(float(row["seconds"]) for row in results),
        )
    for plan in plans:
        if written.get((plan.split, plan.shard)) != plan.examples:
            raise RuntimeError(  # pragma: no cover - a bug, not bad input
                f"Shard {plan.shard} of `{plan.split}` holds "
                f"{written.get((plan.split, plan.shard))} examples, planned "
                f"{plan.examples}."
            )

    examples = {split: 0 for split in SPLITS}
    shards = {split: 0 for split in SPLITS}
    sizes: dict[str, list[int]] = {split: [] for split in SPLITS}
    for plan in plans:
        examples[plan.split] += plan.examples
        shards[plan.split] += 1
        sizes[plan.split].append(plan.examples)
    for split in SPLITS:
        logger.info(
            "%s: %d users, %d examples in %d shards -> %s",
            split,
            users[split],
            examples[split],
            shards[split],
            output_dir / split,
        )
    if users["train"] and not examples["train"]:
        raise ValueError(
            "No training examples: every training user has a single rating. "
            "Check `ratings.csv` or lower `validation_fraction`."
        )
    shard_examples = {
        split: [min(sizes[split], default=0), max(sizes[split], default=0)]
        for split in SPLITS
    }
    return HistoryStats(users, examples, users_without_examples, shards, shard_examples)


def _write_shards(
    batch: dict[str, np.ndarray], arrays: list, max_history: int
) -> dict[str, np.ndarray]:
    """Ray Data task: write the shards of `batch`; return their row counts."""
    started = time.perf_counter()
    sorted_arrays = ray.get(arrays[0])
    rows = [
        write_shard(
            sorted_arrays,
            int(row_start),
            int(first_target),
            int(row_stop),
            max_history,
            Path(str(path)),
        )
        for row_start, first_target, row_stop, path in zip(
            batch["row_start"],
            batch["first_target"],
            batch["row_stop"],
            batch["path"],
            strict=True,
        )
    ]
    return {
        "split": batch["split"],
        "shard": batch["shard"],
        "rows": np.array(rows, dtype=np.int64),
        "seconds": np.full(len(rows), time.perf_counter() - started),
    }


def rated_before(
    ratings: pa.Table, vocabulary: MovieVocabulary, examples: dict[str, np.ndarray]
) -> list[np.ndarray]:
    """For each example, the vocabulary rows its user rated before the target.

    This is the user's whole past, not only the `max_history` movies of the
    example, so that evaluation never recommends a movie already seen.

    Args:
        ratings: Clean ratings of (at least) the examples' users.
        vocabulary: Movie id to embedding row mapping.
        examples: `user_id` and `position` columns, [num_examples].
    """
    wanted = np.unique(examples[USER_ID])
    ratings = ratings.filter(pc.is_in(ratings[USER_ID], pa.array(wanted)))
    user_ids = ratings[USER_ID].to_numpy()
    movie_ids = ratings["movie_id"].to_numpy()
    timestamps = ratings["timestamp"].to_numpy()

    by_user = np.argsort(user_ids, kind="stable")
    starts = np.searchsorted(user_ids[by_user], wanted)
    ends = np.searchsorted(user_ids[by_user], wanted, side="right")
    sequences = {}
    for user, start, end in zip(wanted, starts, ends, strict=True):
        rows = by_user[start:end]
        order = chronological_order(timestamps[rows], movie_ids[rows])
        sequences[user] = vocabulary.rows(movie_ids[rows][order])
    return [
        sequences[user][:position]
        for user, position in zip(examples[USER_ID], examples[POSITION], strict=True)
    ]


def read_examples(split_dir: Path) -> ray.data.Dataset:
    """The examples of one split, as written by `write_examples`."""
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"No examples at `{split_dir}`; run the histories stage first "
            "(`python jobs/histories.py`)."
        )
    return ray.data.read_parquet(str(split_dir.resolve()))
