"""Watch histories: from ratings to padded next-movie examples, with Ray Data.

Each user's ratings are put in time order (ties broken by movie id). Every
rating after the first becomes one example: the target is that movie, the
history is the movies before it (the latest `max_history`, oldest first,
padded on the right with `PAD_ID`), and each history rating is centred on the
mean of all the user's ratings before the target. Only the past is used, so
an example carries nothing of what the user did next, and a live user's
history is centred the same way at serving time.

Users, not examples, are split between training and validation, by a seeded
hash of the user id: a user's split never depends on the data's order, on
the worker count or on the other users.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from recray.config import DataConfig
from recray.schema import (
    HISTORY_IDS,
    HISTORY_RATINGS,
    PAD_ID,
    POSITION,
    TARGET_ID,
    USER_ID,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation")


@dataclass(frozen=True)
class MovieVocabulary:
    """Maps MovieLens movie ids to rows of the embedding table.

    Row `PAD_ID` (0) is padding and unknown movies; movie `movie_ids[i]` is
    row `i + 1`.
    """

    movie_ids: np.ndarray  # [num_movies] sorted int64

    @property
    def size(self) -> int:
        """Rows of the embedding table, the padding row included."""
        return len(self.movie_ids) + 1

    def rows(self, movie_ids: np.ndarray) -> np.ndarray:
        """Vocabulary rows [n] of MovieLens ids [n]; unknown ids map to `PAD_ID`."""
        positions = np.searchsorted(self.movie_ids, movie_ids)
        positions = np.clip(positions, 0, len(self.movie_ids) - 1)
        known = self.movie_ids[positions] == movie_ids
        return np.where(known, positions + 1, PAD_ID).astype(np.int32)


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """A fast, well-mixed 64-bit hash (Steele et al., SplitMix64)."""
    with np.errstate(over="ignore"):
        values = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return values ^ (values >> np.uint64(31))


def is_validation_user(user_ids: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """Whether each user is held out, [n] bool, from a seeded hash of the id."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(
            f"`validation_fraction` must be in [0, 1), got {fraction}; "
            "0.2 holds out a fifth of the users."
        )
    seed_hash = _splitmix64(np.array([seed], dtype=np.uint64))
    hashed = _splitmix64(np.asarray(user_ids, dtype=np.uint64) ^ seed_hash)
    uniform = (hashed >> np.uint64(11)).astype(np.float64) / float(2**53)
    return uniform < fraction


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


@dataclass(frozen=True)
class HistoryStats:
    """What the histories stage wrote."""

    users: dict[str, int]
    examples: dict[str, int]
    users_without_examples: int

    def to_dict(self) -> dict:
        return {
            "users": self.users,
            "examples": self.examples,
            "users_without_examples": self.users_without_examples,
        }


def write_examples(
    ratings: pa.Table,
    vocabulary: MovieVocabulary,
    config: DataConfig,
    output_dir: Path,
) -> HistoryStats:
    """Build every user's examples with Ray Data and write them as Parquet.

    Examples are written in user order; training mixes users with a shuffle
    buffer at read time, which costs far less than a global shuffle here.

    Args:
        ratings: Clean ratings: `user_id`, `movie_id`, `rating`, `timestamp`.
        vocabulary: Movie id to embedding row mapping.
        config: `max_history`, `validation_fraction` and `split_seed`.
        output_dir: Gets `train/` and `validation/` folders of Parquet files.

    Returns:
        Users and examples per split.
    """
    user_ids = ratings.column("user_id").to_numpy()
    held_out = is_validation_user(
        user_ids, config.split_seed, config.validation_fraction
    )
    ratings = ratings.append_column("is_validation", pa.array(held_out))

    # A user with a single rating has no previous movie, so gives no example.
    unique_users, ratings_per_user = np.unique(user_ids, return_counts=True)
    users_without_examples = int((ratings_per_user < 2).sum())
    if users_without_examples:
        logger.warning(
            "%d users have a single rating and give no example.",
            users_without_examples,
        )

    build = partial(
        user_examples, vocabulary=vocabulary, max_history=config.max_history
    )
    # Ray's default of 200 shuffle partitions costs minutes of task overhead
    # on a small cluster; a few per CPU keeps every CPU busy.
    partitions = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    users: dict[str, int] = {}
    examples: dict[str, int] = {}
    for split in SPLITS:
        in_split = held_out if split == "validation" else ~held_out
        split_ratings = ratings.filter(pa.array(in_split)).drop_columns(
            ["is_validation"]
        )
        users[split] = len(np.unique(split_ratings.column("user_id").to_numpy()))
        dataset = (
            ray.data.from_arrow(split_ratings)
            .groupby(USER_ID, num_partitions=partitions)
            .map_groups(build, batch_format="numpy")
        )
        split_dir = output_dir / split
        # Ray appends to a folder; stale shards of an earlier run must go.
        shutil.rmtree(split_dir, ignore_errors=True)
        dataset.write_parquet(str(split_dir.resolve()))
        examples[split] = read_examples(split_dir).count()
        logger.info(
            "%s: %d users, %d examples -> %s",
            split,
            users[split],
            examples[split],
            split_dir,
        )
    if unique_users.size and not examples["train"]:
        raise ValueError(
            "No training examples: every training user has a single rating. "
            "Check `ratings.csv` or lower `validation_fraction`."
        )
    return HistoryStats(users, examples, users_without_examples)


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
