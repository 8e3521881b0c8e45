"""Streaming histories: the vectorised kernel, equal shards, count-based split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recray.config import DataConfig
from recray.data.histories import (
    examples_of_sorted,
    is_validation_user,
    plan_shards,
    read_examples,
    user_examples,
    write_examples,
)
from recray.data.vocabulary import MovieVocabulary
from recray.schema import EXAMPLE_COLUMNS, POSITION, TARGET_ID, USER_ID


def _random_ratings(users: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 40, users)
    user_ids = np.repeat(rng.permutation(np.arange(10, 10 + users * 3, 3)), counts)
    return pa.table(
        {
            "user_id": user_ids.astype(np.int64),
            "movie_id": rng.integers(1, 60, user_ids.size).astype(np.int64),
            "rating": (rng.integers(1, 11, user_ids.size) / 2).astype(np.float32),
            # Few distinct timestamps, so ties are broken by movie id.
            "timestamp": rng.integers(0, 20, user_ids.size).astype(np.int64),
        }
    )


def _per_user(ratings: pa.Table, vocabulary: MovieVocabulary, max_history: int):
    """Examples by the per-user reference `user_examples`, keyed (user, position)."""
    table = ratings.to_pydict()
    columns = {name: np.asarray(values) for name, values in table.items()}
    result = {}
    for user in np.unique(columns["user_id"]):
        mine = {
            name: values[columns["user_id"] == user] for name, values in columns.items()
        }
        examples = user_examples(mine, vocabulary, max_history)
        for row in range(len(examples[USER_ID])):
            result[(int(user), int(examples[POSITION][row]))] = {
                name: examples[name][row] for name in EXAMPLE_COLUMNS
            }
    return result


def _assert_same(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, row in expected.items():
        for name in EXAMPLE_COLUMNS:
            np.testing.assert_array_equal(actual[key][name], row[name], err_msg=name)


def test_vectorised_kernel_equals_per_user_examples() -> None:
    ratings = _random_ratings(40)
    vocabulary = MovieVocabulary(np.arange(1, 50))  # 50..59 are unknown: PAD
    order = np.lexsort(
        (
            ratings["movie_id"].to_numpy(),
            ratings["timestamp"].to_numpy(),
            ratings["user_id"].to_numpy(),
        )
    )
    sorted_ratings = ratings.take(pa.array(order))
    users = sorted_ratings["user_id"].to_numpy()
    rows = vocabulary.rows(sorted_ratings["movie_id"].to_numpy())
    stars2 = (sorted_ratings["rating"].to_numpy() * 2).astype(np.int8)

    columns = examples_of_sorted(users, rows, stars2, max_history=7)

    actual = {
        (int(u), int(p)): {name: columns[name][i] for name in EXAMPLE_COLUMNS}
        for i, (u, p) in enumerate(
            zip(columns[USER_ID], columns[POSITION], strict=True)
        )
    }
    _assert_same(actual, _per_user(ratings, vocabulary, 7))

    # Cutting the targets mid-user keeps the history before the cut.
    cut = int(np.flatnonzero(users == users[len(users) // 2])[3])
    tail = examples_of_sorted(users, rows, stars2, 7, first_target=cut)
    first = len(columns[USER_ID]) - len(tail[USER_ID])
    for name in EXAMPLE_COLUMNS:
        np.testing.assert_array_equal(tail[name], columns[name][first:])


def test_shards_are_equal_and_cover_every_target() -> None:
    users = np.repeat(np.arange(30), np.arange(1, 31))  # 30 users, 1..30 ratings
    plans = plan_shards(users, "train", 0, users.size, examples_per_shard=100)

    sizes = [plan.examples for plan in plans]
    assert sum(sizes) == users.size - 30
    assert max(sizes) - min(sizes) <= 1
    assert len(plans) == 5  # ceil(435 / 100)
    for plan in plans:
        assert plan.row_start == 0 or users[plan.row_start - 1] != users[plan.row_start]
        assert users[plan.first_target] == users[plan.first_target - 1]


def test_validation_by_count_is_exact_seeded_and_order_free() -> None:
    user_ids = np.repeat(np.arange(1000, 6000), 3)
    held = is_validation_user(user_ids, seed=7, fraction=0.0, count=200)
    chosen = np.unique(user_ids[held])

    assert chosen.size == 200
    shuffled = np.random.default_rng(1).permutation(user_ids)
    again = np.unique(shuffled[is_validation_user(shuffled, 7, 0.0, count=200)])
    np.testing.assert_array_equal(again, chosen)
    other_seed = np.unique(user_ids[is_validation_user(user_ids, 8, 0.0, count=200)])
    assert not np.array_equal(other_seed, chosen)
    assert is_validation_user(user_ids, 7, 0.0, count=10_000).all()
    with pytest.raises(ValueError, match="validation_users"):
        is_validation_user(user_ids, 7, 0.0, count=-1)


@pytest.mark.slow
def test_written_shards_equal_the_per_user_reference(
    ray_cluster, tmp_path: Path
) -> None:
    ratings = _random_ratings(120, seed=3)
    vocabulary = MovieVocabulary(np.arange(1, 60))
    config = DataConfig(
        data_dir=tmp_path,
        max_history=5,
        validation_users=30,
        examples_per_shard=300,
    )

    stats = write_examples(ratings, vocabulary, config, tmp_path / "examples")

    assert stats.users["validation"] == 30
    expected = _per_user(ratings, vocabulary, 5)
    actual = {}
    for split in ("train", "validation"):
        files = sorted((tmp_path / "examples" / split).glob("shard-*.parquet"))
        sizes = [pq.ParquetFile(path).metadata.num_rows for path in files]
        assert len(files) == stats.shards[split]
        assert max(sizes) - min(sizes) <= 1
        assert stats.shard_examples[split] == [min(sizes), max(sizes)]
        batch = read_examples(tmp_path / "examples" / split).take_batch(
            sum(sizes), batch_format="numpy"
        )
        assert len(batch[TARGET_ID]) == stats.examples[split] == sum(sizes)
        for row, (user, position) in enumerate(
            zip(batch[USER_ID], batch[POSITION], strict=True)
        ):
            actual[(int(user), int(position))] = {
                name: batch[name][row] for name in EXAMPLE_COLUMNS
            }
    _assert_same(actual, expected)
    assert stats.shards["train"] >= 2
