"""Shared fixtures: real data paths and one local Ray cluster per test session."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

import recray  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any TensorFlow import)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
MOVIELENS_SMALL = SHARED_DATA / "movielens" / "ml-latest-small"
TMDB_5000 = SHARED_DATA / "tmdb" / "tmdb_5000_movies.csv"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: trains models or starts Ray clusters")


@pytest.fixture(scope="session")
def ray_auth_token() -> str:
    """A token for this session's Ray cluster; Ray 2.60 enforces token auth."""
    token = uuid.uuid4().hex
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = token
    return token


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
