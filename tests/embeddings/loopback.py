"""A real OpenAI-compatible embedding server on loopback, and a faulty proxy.

`InfinityServer` runs infinity-emb (from `.venv-infinity`, `make infinity-venv`)
serving the packaged all-MiniLM-L6-v2 weights under an OpenAI model name, bound
to 127.0.0.1, telemetry off. `FaultProxy` sits between the client and it: it
checks the API key, can enforce requests- and tokens-per-minute limits (429 with
`Retry-After` beyond them), injects scripted faults (429, 500, dropped
connections, slow answers, exhausted quota, bad key), can hold requests (to kill
a job midway), and counts every text the server embedded.

Used by tests/embeddings and benchmarks/bench_embed.py.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import os
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
INFINITY_PYTHON = REPO_ROOT / ".venv-infinity" / "bin" / "python"
SERVED_MODEL = "text-embedding-3-small"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class InfinityServer:
    """infinity-emb on 127.0.0.1 serving the packaged MiniLM as `SERVED_MODEL`.

    Args:
        model_path: Folder of the sentence-transformers model.
        log_path: Where the server's output goes.
        startup_timeout_s: Most seconds to wait for `/models` to answer.
    """

    def __init__(
        self, model_path: str, log_path: Path, startup_timeout_s: float = 240.0
    ) -> None:
        self.model_path = model_path
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen | None = None

    def start(self) -> str:
        """Start the server and wait until it answers; return its base URL.

        Raises:
            FileNotFoundError: `.venv-infinity` is missing.
            RuntimeError: The server exited or did not answer in time; the
                message ends with its log.
        """
        if not INFINITY_PYTHON.is_file():
            raise FileNotFoundError(
                f"`{INFINITY_PYTHON}` is missing; build it with `make infinity-venv`."
            )
        env = {
            **os.environ,
            "INFINITY_ANONYMOUS_USAGE_STATS": "0",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        command = [
            str(INFINITY_PYTHON),
            "-m",
            "infinity_emb.cli",
            "v2",
            "--model-id",
            self.model_path,
            "--served-model-name",
            SERVED_MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--device",
            "cpu",
            "--engine",
            "torch",
            "--no-model-warmup",
            "--log-level",
            "warning",
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        self._process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"infinity-emb exited with {self._process.returncode}:\n"
                    + self.log_tail()
                )
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2):
                    return self.url
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"infinity-emb did not answer within {self.startup_timeout_s:.0f} s:\n"
            + self.log_tail()
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=20)


@dataclass
class Fault:
    """One scripted fault, applied to the next request that arrives.

    Attributes:
        kind: `429` (with `Retry-After`), `500`, `drop` (close the connection
            unanswered), `slow` (answer after `seconds`), `quota` (429
            `insufficient_quota`) or `auth` (401).
        seconds: `Retry-After` of a 429, or the delay of `slow`.
    """

    kind: str
    seconds: float = 1.0


@dataclass
class Arrival:
    """One request as the proxy saw it."""

    time: float
    first_text: str
    num_inputs: int
    outcome: str


@dataclass
class _Bucket:
    rate: float
    capacity: float
    level: float = 0.0
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.level = self.capacity

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def seconds_until(self, cost: float) -> float:
        return max(0.0, (cost - self.level) / self.rate)


class FaultProxy:
    """An OpenAI-compatible front of `upstream` that checks, limits and breaks.

    Args:
        upstream: Base URL of the real server.
        api_key: The only key it accepts (as `Authorization: Bearer ...`).
        requests_per_minute: Enforced request limit, or None.
        tokens_per_minute: Enforced token limit (tiktoken `cl100k_base`), or None.
        burst_seconds: Seconds of each limit its buckets hold.
    """

    def __init__(
        self,
        upstream: str,
        api_key: str,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        burst_seconds: float = 1.0,
    ) -> None:
        self.upstream = upstream
        self.api_key = api_key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._faults: collections.deque[Fault] = collections.deque()
        self._sticky: dict[str, str] = {}
        self._limits = (requests_per_minute, tokens_per_minute, burst_seconds)
        self._hold_after: int | None = None
        self._released = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner = None
        self.reset()

    # -- control, from the test's thread ------------------------------------

    def reset(self) -> None:
        """Forget counters, faults, holds and limit state."""
        with self._lock:
            self.embedded: collections.Counter[str] = collections.Counter()
            self.arrivals: list[Arrival] = []
            self.forwarded_requests = 0
            self._passed = 0  # requests let through to forwarding, done or not
            self.forwarded_tokens = 0
            self.rate_limited = 0
            self.first_forward: float | None = None
            self.last_forward: float | None = None
            self._faults.clear()
            self._sticky.clear()
            self._hold_after = None
            self._released.set()
            rpm, tpm, burst = self._limits
            self._rpm = _Bucket(rpm / 60, max(1.0, rpm * burst / 60)) if rpm else None
            self._tpm = _Bucket(tpm / 60, tpm * burst / 60) if tpm else None

    def add_faults(self, *faults: Fault) -> None:
        """Apply these faults, in order, to the next requests."""
        with self._lock:
            self._faults.extend(faults)

    def fail_text(self, text: str, kind: str = "500") -> None:
        """Answer `kind` to every request that holds `text`, until `reset`."""
        with self._lock:
            self._sticky[text] = kind

    def hold_after(self, requests: int) -> None:
        """Forward `requests` more requests, then hold the rest unforwarded."""
        with self._lock:
            self._hold_after = self._passed + requests
            self._released.clear()

    def release(self) -> None:
        """Answer held requests 503, unforwarded, and stop holding."""
        with self._lock:
            self._hold_after = None
        self._released.set()

    def outcomes(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(arrival.outcome for arrival in self.arrivals)

    # -- the server -----------------------------------------------------------

    def start(self) -> str:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._serve())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("The fault proxy did not start within 30 s.")
        return self.url

    def stop(self) -> None:
        if self._loop is None:
            return
        self._released.set()
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        future.result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    async def _serve(self) -> None:
        import aiohttp
        from aiohttp import web

        from recray.embeddings.openai_provider import encoding

        self._encoding = encoding()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _shutdown(self) -> None:
        await self._runner.cleanup()
        await self._session.close()

    @staticmethod
    def _error(status: int, message: str, kind: str, code: str, headers=None):
        from aiohttp import web

        body = {"error": {"message": message, "type": kind, "code": code}}
        return web.json_response(body, status=status, headers=headers or {})

    def _record(self, texts: list[str], outcome: str) -> None:
        self.arrivals.append(
            Arrival(time.monotonic(), texts[0] if texts else "", len(texts), outcome)
        )

    async def _embeddings(self, request):
        from aiohttp import web

        payload = await request.json()
        texts = payload.get("input") or []
        texts = [texts] if isinstance(texts, str) else list(texts)

        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            with self._lock:
                self._record(texts, "auth")
            # Like OpenAI, the message quotes the key it was given.
            return self._error(
                401,
                f"Incorrect API key provided: {given}.",
                "invalid_request_error",
                "invalid_api_key",
            )

        with self._lock:
            fault = self._faults.popleft() if self._faults else None
            sticky = next((self._sticky[t] for t in texts if t in self._sticky), None)
            if fault is None and sticky is not None:
                fault = Fault(sticky)
            hold = (
                fault is None
                and self._hold_after is not None
                and self._passed >= self._hold_after
            )
            if fault is None and not hold:
                self._passed += 1
            self._record(texts, fault.kind if fault else ("held" if hold else "?"))
            arrival = self.arrivals[-1]

        if hold:
            await asyncio.get_running_loop().run_in_executor(None, self._released.wait)
            return self._error(503, "Held by the test.", "server_error", "held")
        if fault is not None:
            if fault.kind == "429":
                return self._error(
                    429,
                    "Rate limit reached (injected).",
                    "requests",
                    "rate_limit_exceeded",
                    {"retry-after": f"{fault.seconds:g}"},
                )
            if fault.kind == "500":
                return self._error(500, "Injected failure.", "server_error", "500")
            if fault.kind == "quota":
                return self._error(
                    429,
                    "You exceeded your current quota, please check your plan.",
                    "insufficient_quota",
                    "insufficient_quota",
                )
            if fault.kind == "auth":
                return self._error(
                    401, "Invalid key (injected).", "invalid_request_error", "auth"
                )
            if fault.kind == "drop":
                request.transport.close()
                return web.Response(status=500)
            if fault.kind == "slow":
                await asyncio.sleep(fault.seconds)
                if request.transport is None or request.transport.is_closing():
                    arrival.outcome = "slow-abandoned"
                    return web.Response(status=504)
                arrival.outcome = "slow-answered"

        tokens = sum(len(ids) for ids in self._encoding.encode_ordinary_batch(texts))
        with self._lock:
            wait = self._admit(tokens)
            if wait > 0:
                self.rate_limited += 1
                if arrival.outcome == "?":
                    arrival.outcome = "rate_limited"
        if wait > 0:
            return self._error(
                429,
                f"Rate limit reached; retry in {wait:.3f} s.",
                "tokens",
                "rate_limit_exceeded",
                {
                    "retry-after-ms": str(math.ceil(wait * 1000)),
                    "retry-after": str(math.ceil(wait)),
                },
            )

        async with self._session.post(
            f"{self.upstream}/embeddings", json=payload
        ) as upstream:
            body = await upstream.read()
            status = upstream.status
        if status == 200:
            with self._lock:
                self.embedded.update(texts)
                self.forwarded_requests += 1
                self.forwarded_tokens += tokens
                now = time.monotonic()
                self.first_forward = self.first_forward or now
                self.last_forward = now
                if arrival.outcome == "?":
                    arrival.outcome = "ok"
        return web.Response(body=body, status=status, content_type="application/json")

    def _admit(self, tokens: int) -> float:
        """Book a request within the limits; else the seconds until it fits."""
        now = time.monotonic()
        waits = []
        for bucket, cost in ((self._rpm, 1), (self._tpm, tokens)):
            if bucket is not None:
                bucket.refill(now)
                waits.append(bucket.seconds_until(cost))
        wait = max(waits, default=0.0)
        if wait > 0:
            return wait
        if self._rpm is not None:
            self._rpm.level -= 1
        if self._tpm is not None:
            self._tpm.level -= tokens
        return 0.0


def read_json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]
