"""Shared fixtures: real data paths and one local Ray cluster per test session."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

import recray  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any TensorFlow import)

# Ray reads its auth mode once, when it is first imported, so the token must be
# in the environment before any test module imports ray. Ray 2.60 enforces it.
RAY_TEST_TOKEN = uuid.uuid4().hex
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = RAY_TEST_TOKEN

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
MOVIELENS_SMALL = SHARED_DATA / "movielens" / "ml-latest-small"
TMDB_5000 = SHARED_DATA / "tmdb" / "tmdb_5000_movies.csv"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: trains models or starts Ray clusters")


@pytest.fixture(scope="session")
def ray_auth_token() -> str:
    """The token of this session's Ray clusters."""
    return RAY_TEST_TOKEN


@pytest.fixture(scope="session")
def ray_cluster(ray_auth_token: str):
    """Start one local Ray cluster (4 logical CPUs on 2 cores) for the session."""
    import ray

    from recray.cluster import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray(num_cpus=4)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def movielens_small() -> Path:
    if not (MOVIELENS_SMALL / "ratings.csv").is_file():
        pytest.fail(f"MovieLens ml-latest-small not found at {MOVIELENS_SMALL}")
    return MOVIELENS_SMALL


@pytest.fixture(scope="session")
def tmdb_5000() -> Path:
    if not TMDB_5000.is_file():
        pytest.fail(f"TMDB 5000 dump not found at {TMDB_5000}")
    return TMDB_5000


@pytest.fixture(scope="session")
def tiny_movielens(movielens_small: Path, tmp_path_factory) -> Path:
    """A few hundred real ratings: the first 60 users' latest 8 ratings each,
    with the movies, links and tags that they touch."""
    import pandas as pd

    folder = tmp_path_factory.mktemp("ml-tiny")
    ratings = pd.read_csv(movielens_small / "ratings.csv")
    ratings = ratings[ratings.userId <= 60]
    ratings = ratings.sort_values(["userId", "timestamp", "movieId"])
    ratings = ratings.groupby("userId").tail(8)
    movie_ids = set(ratings.movieId)
    ratings.to_csv(folder / "ratings.csv", index=False)
    for name in ("movies", "links", "tags"):
        table = pd.read_csv(movielens_small / f"{name}.csv", dtype=str)
        table[table.movieId.astype(int).isin(movie_ids)].to_csv(
            folder / f"{name}.csv", index=False
        )
    return folder
