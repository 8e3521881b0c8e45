"""One rate limiter for every embedding actor: token buckets for RPM and TPM.

An OpenAI account's limits hold for all of its requests together, so the
actors of the pool ask one shared Ray actor, `RateLimiter`, before each request.
It keeps two token buckets, one of requests and one of tokens, that refill
continuously at the configured per-minute rates and hold at most
`burst_seconds` of them. A request waits until both buckets hold its cost.

A request dearer than a bucket's capacity (one very long text) is let through
once the bucket is full, leaving it in debt, so it can never wait forever; the
long-run rate still never exceeds the limit.

The limiter also carries two signals between actors: `pause(seconds)` after a
429 with `Retry-After` holds every actor's next request, and `abort(reason)`
after a fatal error (bad key, exhausted quota) makes every waiting and later
`acquire` raise, so the job stops at once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


class LimiterAborted(RuntimeError):
    """Raised by `acquire` once any actor has aborted the job."""


@dataclass
class TokenBucket:
    """A bucket that refills at `rate` per second up to `capacity`, starting full.

    Attributes:
        rate: Units added per second.
        capacity: Most units the bucket holds.
        level: Units now in the bucket; negative after an oversized request.
        updated: `time.monotonic()` of the last refill.
    """

    rate: float
    capacity: float
    level: float = float("nan")
    updated: float = 0.0

    def __post_init__(self) -> None:
        if self.level != self.level:  # NaN: start full
            self.level = self.capacity
        self.updated = time.monotonic()

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, cost: float) -> float:
        """Seconds until the bucket can pay `cost` (0 when it can now)."""
        needed = min(cost, self.capacity)
        return max(0.0, (needed - self.level) / self.rate)


class RateLimiter:
    """Token buckets for requests and tokens per minute, shared by all actors.

    Start it as an async Ray actor (`ray.remote(RateLimiter)`), so that many
    actors can wait in `acquire` at once; waiters are served in arrival order.

    Args:
        requests_per_minute: Request limit.
        tokens_per_minute: Token limit.
        burst_seconds: Seconds of each limit that may be spent at once.
    """

    def __init__(
        self,
        requests_per_minute: int,
        tokens_per_minute: int,
        burst_seconds: float = 1.0,
    ) -> None:
        self._requests = TokenBucket(
            requests_per_minute / 60.0,
            max(1.0, requests_per_minute * burst_seconds / 60.0),
        )
        self._tokens = TokenBucket(
            tokens_per_minute / 60.0, tokens_per_minute * burst_seconds / 60.0
        )
        self._paused_until = 0.0
        self._aborted: str | None = None
        self._lock: asyncio.Lock | None = None
        self._granted_requests = 0
        self._granted_tokens = 0
        self._waited_s = 0.0
        self._pauses = 0

    async def acquire(self, tokens: int) -> float:
        """Wait until one request of `tokens` tokens may go out, and book it.

        Args:
            tokens: Tokens the request carries.

        Returns:
            Seconds this call waited.

        Raises:
            LimiterAborted: The job was aborted before or while waiting.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        started = time.monotonic()
        async with self._lock:
            while True:
                if self._aborted is not None:
                    raise LimiterAborted(self._aborted)
                now = time.monotonic()
                self._requests.refill(now)
                self._tokens.refill(now)
                wait = max(
                    self._paused_until - now,
                    self._requests.wait_for(1),
                    self._tokens.wait_for(tokens),
                )
                if wait <= 0:
                    self._requests.level -= 1
                    self._tokens.level -= tokens
                    self._granted_requests += 1
                    self._granted_tokens += tokens
                    waited = time.monotonic() - started
                    self._waited_s += waited
                    return waited
                # Short sleeps, so that an abort is noticed quickly.
                await asyncio.sleep(min(wait, 0.5))

    def pause(self, seconds: float) -> None:
        """Hold every actor's next request for `seconds` (a 429's Retry-After)."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        self._pauses += 1

    def abort(self, reason: str) -> None:
        """Make every current and later `acquire` raise `LimiterAborted(reason)`."""
        if self._aborted is None:
            self._aborted = reason

    def aborted(self) -> str | None:
        """The reason of the first abort, or None."""
        return self._aborted

    def stats(self) -> dict[str, float]:
        """Requests and tokens granted, seconds waited in total, pauses."""
        return {
            "requests": self._granted_requests,
            "tokens": self._granted_tokens,
            "waited_s": self._waited_s,
            "pauses": self._pauses,
        }
