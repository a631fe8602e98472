"""A chat-completions client for long, many-item runs against one OpenAI-compatible server.

What a stage needs from it, and the ``openai`` SDK alone does not give:

* **Order and bounded memory**: ``ChatClient.run`` takes any iterable (a generator over 100K
  items is fine), keeps at most ``concurrency`` items pulled ahead (in flight or finished but not
  yet yielded), and yields one ``ChatResult`` per request, in request order.
* **No lost item**: every server trouble becomes a ``ChatResult`` with a short ``reason`` code
  (``http_429``, ``http_5xx``, ``http_4xx``, ``timeout``, ``connection``, ``malformed_json``,
  ``empty_choices``, ``missing_field``, ``empty_reply``, ``oversized_reply``, ``corrupt_image``) and the number of
  HTTP ``attempts`` it took; nothing raises for a per-item failure.
* **Retries that respect the server**: 429, 5xx, timeouts, connection errors and malformed bodies
  (a proxy cutting a reply short is transient) are retried up to ``max_retries`` times, sleeping
  ``uniform(0, min(backoff_max_s, backoff_base_s * 2**n))`` ("full jitter", so a fleet of workers
  does not retry in lockstep) or the server's ``Retry-After`` / ``retry-after-ms`` when it sends
  one. Other 4xx (bad request, wrong model name) are the caller's bug and are not retried; nor is
  an empty ``choices`` list or a reply without ``message.content`` (the server answered, and
  asking again costs tokens for the same answer).
* **A client-side rate limit** (``rate_limit_rps``): attempts are spaced at least ``1/rps`` apart,
  retries included, so a shared server's quota holds whatever the concurrency.
* **Accounting**: ``UsageMeter`` sums requests, retries, failures by reason, the servers' token
  ``usage`` and the cost from the endpoint's prices; ``to_metadata()`` goes into manifests.

HTTP goes through ``httpx`` (the ``openai`` SDK's own transport, thread-safe, connection pooled)
rather than the SDK's typed client: the SDK retries on its own schedule, and it either raises one
generic error or builds a model object without complaint for the malformed, empty or field-missing
bodies this client must tell apart.
"""

from __future__ import annotations

import base64
import email.utils
import json
import os
import random
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import httpx

from deepperception.serving.endpoint import EndpointConfig

RETRYABLE = frozenset({"http_429", "http_5xx", "timeout", "connection", "malformed_json"})
"""Reason codes worth another attempt; everything else is final on the first occurrence."""


@dataclass(frozen=True)
class ChatRequest:
    """One user turn: ``images`` (encoded PNG/JPEG/WebP bytes, sent first, as the official
    ``inference.py`` does) then ``text``. ``key`` comes back on the result unchanged."""

    key: str
    text: str
    images: Sequence[bytes] = ()
    max_tokens: int = 256
    temperature: float | None = None
    """None leaves the server's default (``transformers serve`` warns about ``0``)."""
    system: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    """Extra body fields (``top_p``, ``seed``, ``stop``...), passed through as given."""


@dataclass(frozen=True)
class ChatResult:
    """The outcome of one request: ``text`` on success, else ``error`` (a human message) and
    ``reason`` (a short code). Tokens are summed over every attempt that reported ``usage``
    (what the run paid for); ``latency_s`` runs from the first attempt to the final answer,
    backoff sleeps included."""

    key: str
    text: str | None
    error: str | None = None
    reason: str | None = None
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def image_mime(data: bytes) -> str:
    """The MIME type of encoded image bytes, from their magic number.

    >>> image_mime(b"\\x89PNG\\r\\n\\x1a\\n...."), image_mime(b"\\xff\\xd8\\xff\\xe0..")
    ('image/png', 'image/jpeg')
    >>> image_mime(b"RIFF\\x00\\x00\\x00\\x00WEBPVP8 ")
    'image/webp'
    >>> image_mime(b"GIF89a")
    Traceback (most recent call last):
    ...
    ValueError: not a PNG, JPEG or WebP image (starts with b'GIF89a')
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise ValueError(f"not a PNG, JPEG or WebP image (starts with {bytes(data[:12])!r})")


def image_data_url(data: bytes) -> str:
    """A base64 ``data:`` URL with the image's real MIME type (servers decode by it).

    >>> image_data_url(b"\\xff\\xd8\\xff\\xdb")
    'data:image/jpeg;base64,/9j/2w=='
    """
    return f"data:{image_mime(data)};base64," + base64.b64encode(data).decode("ascii")


def retry_after_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms`` (OpenAI), ``Retry-After`` as
    seconds or as an HTTP date; None when absent or unreadable.

    >>> retry_after_s({"retry-after": "2"}), retry_after_s({"retry-after-ms": "150"}), retry_after_s({})
    (2.0, 0.15, None)
    >>> retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:05 GMT"}, now=1445412480.0)
    5.0
    """
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        if "retry-after-ms" in lower:
            return max(0.0, float(lower["retry-after-ms"]) / 1000.0)
        if "retry-after" in lower:
            value = lower["retry-after"].strip()
            try:
                return max(0.0, float(value))
            except ValueError:
                when = email.utils.parsedate_to_datetime(value).timestamp()
                return max(0.0, when - (time.time() if now is None else now))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return None


def backoff_s(retry: int, base: float, cap: float, retry_after: float | None, rng: random.Random) -> float:
    """The sleep before retry number ``retry`` (1-based): the server's ``Retry-After`` (capped at
    ``cap``) when given, else full jitter ``uniform(0, min(cap, base * 2**(retry-1)))``.

    >>> backoff_s(3, 1.0, 30.0, 2.5, random.Random(0))
    2.5
    >>> 0 <= backoff_s(10, 1.0, 30.0, None, random.Random(0)) <= 30
    True
    """
    if retry_after is not None:
        return min(cap, retry_after)
    return rng.uniform(0.0, min(cap, base * (2 ** (retry - 1))))


class RateLimiter:
    """Hands out evenly spaced start times, ``1/rps`` apart, to any number of threads (no burst:
    a server quota counted per second is never exceeded by a burst after an idle spell).

    >>> RateLimiter(None).acquire()  # unlimited: returns at once
    """

    def __init__(self, rps: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rps is not None and rps <= 0:
            raise ValueError(f"rate limit must be > 0 requests/s, got {rps}")
        self.interval = None if rps is None else 1.0 / rps
        self._clock, self._sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if self.interval is None:
            return
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            self._sleep(slot - now)


class UsageMeter:
    """Thread-safe totals of one run (or several runs sharing a client): items, HTTP requests,
    retries, failures by reason, tokens, cost and wall time.

    >>> m = UsageMeter(price_per_1k_prompt_tokens=1.0, price_per_1k_completion_tokens=2.0)
    >>> m.record_attempt(500, 250); m.record_item(None); m.record_item("timeout")
    >>> md = m.to_metadata(); (md["items"], md["failed"], md["failures"], md["cost"])
    (2, 1, {'timeout': 1}, 1.0)
    """

    def __init__(self, price_per_1k_prompt_tokens: float = 0.0, price_per_1k_completion_tokens: float = 0.0,
                 model: str | None = None) -> None:
        self.model = model
        self.price_prompt = price_per_1k_prompt_tokens
        self.price_completion = price_per_1k_completion_tokens
        self.items = 0
        self.requests = 0
        self.retries = 0
        self.failures: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.wall_s = 0.0
        self._lock = threading.Lock()

    def record_request(self) -> None:
        with self._lock:
            self.requests += 1

    def record_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def record_attempt(self, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens

    def record_item(self, reason: str | None) -> None:
        with self._lock:
            self.items += 1
            if reason is not None:
                self.failures[reason] += 1

    def record_wall(self, seconds: float) -> None:
        with self._lock:
            self.wall_s += seconds

    @property
    def cost(self) -> float:
        return self.prompt_tokens / 1000.0 * self.price_prompt + self.completion_tokens / 1000.0 * self.price_completion

    def to_metadata(self) -> dict[str, Any]:
        """The manifest/data-card entry of this run's model traffic (plain JSON types)."""
        with self._lock:
            failed = sum(self.failures.values())
            return {
                "model": self.model,
                "items": self.items,
                "succeeded": self.items - failed,
                "failed": failed,
                "failures": dict(sorted(self.failures.items())),
                "requests": self.requests,
                "retries": self.retries,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "cost": round(self.cost, 6),
                "price_per_1k_prompt_tokens": self.price_prompt,
                "price_per_1k_completion_tokens": self.price_completion,
                "wall_s": round(self.wall_s, 3),
            }


@dataclass
class _Attempt:
    text: str | None = None
    reason: str | None = None
    error: str | None = None
    retry_after: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def parse_completion(status: int, body: bytes, headers: Mapping[str, str]) -> _Attempt:
    """Classify one HTTP answer of ``/chat/completions``.

    >>> parse_completion(200, b'{"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 3}}', {})
    _Attempt(text='hi', reason=None, error=None, retry_after=None, prompt_tokens=3, completion_tokens=0)
    >>> parse_completion(200, b'{"choices": []}', {}).reason, parse_completion(200, b'{"choi', {}).reason
    ('empty_choices', 'malformed_json')
    >>> parse_completion(200, b'{"choices": [{"message": {}}]}', {}).reason, parse_completion(404, b'', {}).reason
    ('missing_field', 'http_4xx')
    """
    snippet = body[:300].decode("utf-8", "replace")
    if status == 429:
        return _Attempt(reason="http_429", error=f"HTTP 429: {snippet}", retry_after=retry_after_s(headers))
    if status >= 500:
        return _Attempt(reason="http_5xx", error=f"HTTP {status}: {snippet}", retry_after=retry_after_s(headers))
    if not 200 <= status < 300:
        return _Attempt(reason="http_4xx", error=f"HTTP {status}: {snippet}")
    try:
        data = json.loads(body)
    except ValueError as exc:
        return _Attempt(reason="malformed_json", error=f"reply is not JSON ({exc}): {snippet!r}")
    if not isinstance(data, dict):
        return _Attempt(reason="malformed_json", error=f"reply is JSON but not an object: {snippet!r}")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    tokens = dict(prompt_tokens=_int(usage.get("prompt_tokens")), completion_tokens=_int(usage.get("completion_tokens")))
    choices = data.get("choices")
    if choices is None:
        return _Attempt(reason="missing_field", error=f"reply has no 'choices': {snippet!r}", **tokens)
    if not isinstance(choices, list):
        return _Attempt(reason="malformed_json", error=f"'choices' is not a list: {snippet!r}", **tokens)
    if not choices:
        return _Attempt(reason="empty_choices", error="reply has an empty 'choices' list", **tokens)
    first = choices[0]
    message = first.get("message") if isinstance(first, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        return _Attempt(reason="missing_field", error=f"reply has no choices[0].message.content: {snippet!r}", **tokens)
    if not content.strip():
        return _Attempt(reason="empty_reply", error="reply content is empty", **tokens)
    return _Attempt(text=content, **tokens)


class ChatClient:
    """Bounded-concurrency, rate-limited, retrying client of one endpoint (thread-safe).

    ``api_key`` defaults to the environment variable ``endpoint.api_key_env`` (``EMPTY`` when
    unset: local servers ignore it). Use as a context manager, or call ``close()``, to release
    the connection pool.
    """

    def __init__(self, endpoint: EndpointConfig, api_key: str | None = None, *, meter: UsageMeter | None = None,
                 rng: random.Random | None = None, transport: httpx.BaseTransport | None = None) -> None:
        self.endpoint = endpoint
        self.model = endpoint.model
        self.meter = meter or UsageMeter(endpoint.price_per_1k_prompt_tokens, endpoint.price_per_1k_completion_tokens,
                                         model=endpoint.model)
        key = api_key if api_key is not None else os.environ.get(endpoint.api_key_env) or "EMPTY"
        self._http = httpx.Client(
            base_url=endpoint.base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(endpoint.timeout_s),
            limits=httpx.Limits(max_connections=endpoint.concurrency, max_keepalive_connections=endpoint.concurrency),
            transport=transport,
        )
        self._limiter = RateLimiter(endpoint.rate_limit_rps)
        self._rng = rng or random.Random()

    def __enter__(self) -> "ChatClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        if request.images:
            content: Any = [{"type": "image_url", "image_url": {"url": image_data_url(b)}} for b in request.images]
            content.append({"type": "text", "text": request.text})
        else:
            content = request.text
        messages = [{"role": "user", "content": content}]
        if request.system is not None:
            messages.insert(0, {"role": "system", "content": request.system})
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": request.max_tokens}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        body.update(request.params)
        return body

    def _attempt(self, body: dict[str, Any]) -> _Attempt:
        cap = self.endpoint.max_response_bytes
        deadline = time.monotonic() + self.endpoint.timeout_s
        try:
            with self._http.stream("POST", "chat/completions", json=body) as resp:
                chunks: list[bytes] = []
                size = 0
                for chunk in resp.iter_bytes():  # read at most ``cap`` bytes: a runaway body costs no memory
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > cap:
                        return _Attempt(reason="oversized_reply",
                                        error=f"reply from {self.model} is over max_response_bytes ({cap} bytes); "
                                              f"cut off unread (HTTP {resp.status_code})")
                    if time.monotonic() > deadline:  # httpx's timeout is per read: a trickling body never trips it
                        return _Attempt(reason="timeout", error=f"reply from {self.model} still arriving after "
                                                                f"{self.endpoint.timeout_s} s (cut off)")
                status, content, headers = resp.status_code, b"".join(chunks), resp.headers
        except httpx.TimeoutException as exc:
            return _Attempt(reason="timeout", error=f"no reply from {self.model} within {self.endpoint.timeout_s} s ({type(exc).__name__})")
        except httpx.TransportError as exc:
            return _Attempt(reason="connection", error=f"{type(exc).__name__} talking to {self.model} at {self.endpoint.base_url}: {exc}")
        except httpx.DecodingError as exc:  # a body that does not match its Content-Encoding (garbage gzip...)
            return _Attempt(reason="malformed_json", error=f"reply from {self.model} does not decode: {exc}")
        return parse_completion(status, content, headers)

    def complete(self, request: ChatRequest) -> ChatResult:
        """One request with its retries; never raises for server trouble (see the module doc)."""
        if not isinstance(request, ChatRequest):
            raise TypeError(f"expected a ChatRequest, got {type(request).__name__}")
        start = time.monotonic()
        try:
            body = self._body(request)
        except ValueError as exc:
            self.meter.record_item("corrupt_image")
            return ChatResult(request.key, None, f"image not sent: {exc}", "corrupt_image", 0)
        attempts = prompt_tokens = completion_tokens = 0
        while True:
            attempts += 1
            self._limiter.acquire()
            self.meter.record_request()
            a = self._attempt(body)
            prompt_tokens += a.prompt_tokens
            completion_tokens += a.completion_tokens
            self.meter.record_attempt(a.prompt_tokens, a.completion_tokens)
            if a.reason is None or a.reason not in RETRYABLE or attempts > self.endpoint.max_retries:
                break
            self.meter.record_retry()
            time.sleep(backoff_s(attempts, self.endpoint.backoff_base_s, self.endpoint.backoff_max_s, a.retry_after, self._rng))
        self.meter.record_item(a.reason)
        error = None if a.reason is None else (a.error if attempts == 1 else f"{a.error} (after {attempts} attempts)")
        return ChatResult(request.key, a.text, error, a.reason, attempts, prompt_tokens, completion_tokens,
                          time.monotonic() - start)

    def run(self, requests: Iterable[ChatRequest]) -> Iterator[ChatResult]:
        """One ``ChatResult`` per request, in request order, with at most ``concurrency`` requests
        pulled from ``requests`` ahead of what has been yielded (so memory is bounded whatever the
        input's size, and the input is pulled lazily from the caller's thread)."""
        source = iter(requests)
        window: deque[Future[ChatResult]] = deque()
        start = time.monotonic()
        pool = ThreadPoolExecutor(max_workers=self.endpoint.concurrency, thread_name_prefix="chat")
        exhausted = False

        def fill() -> None:
            nonlocal exhausted
            while not exhausted and len(window) < self.endpoint.concurrency:
                try:
                    req = next(source)
                except StopIteration:
                    exhausted = True
                    return
                if not isinstance(req, ChatRequest):
                    raise TypeError(f"expected a ChatRequest, got {type(req).__name__}")
                window.append(pool.submit(self.complete, req))

        try:
            fill()
            while window:
                result = window.popleft().result()
                fill()  # before yielding: the window stays full while the caller works on the result
                yield result
        finally:
            for fut in window:
                fut.cancel()
            pool.shutdown(wait=True)
            self.meter.record_wall(time.monotonic() - start)
