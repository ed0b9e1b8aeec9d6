"""An upstream tier: the worker's tasks forwarded to an OpenAI-compatible HTTP provider.

``UpstreamBackend`` is a ``Backend`` (``services.worker.backend``) whose answers come from
``<base_url>/chat/completions``: streamed (server-sent events) when the client streams, one JSON
body otherwise (much cheaper for both sides), with the usage the provider reports. Retries live
here and nowhere else: a request that failed before any output (connection refused or reset, a
timeout, 429, 5xx) is sent again after an exponential, jittered backoff; after that, and for
any failure once output has been sent, the client gets a 503 (504 for a timeout). A circuit
breaker counts those failures: while it is open the worker refuses the tier's tasks at once
(``unavailable``) instead of making every client wait out the timeouts.

The HTTP client is aiohttp: measured on a 2-core VM against a local mock (bench/upstream_client.py)
it spends ~100 µs of CPU per request where httpx spends ~400 (one client), ~60 against ~750 (16 at
once). Plain logic otherwise: no bus code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiohttp
from opentelemetry import trace

from contracts.subjects import Priority
from contracts.v1 import TaskEnvelope
from services.shared import metrics
from services.shared.errors import BadRequest, SkinflintError, Timeout, Unavailable
from services.shared.tiers import UpstreamOptions
from services.worker.backend import WorkerIdentity
from services.worker.breaker import CircuitBreaker, State
from services.worker.engine import EngineStep
from services.worker.provider import (
    ProviderError,
    ProviderProtocolError,
    SseParser,
    StreamState,
    error_message,
    error_param,
    prompt_estimate,
    request_body,
    whole_answer,
)

log = logging.getLogger(__name__)

#: The prefix of every refusal and error that means "this tier's provider is down": a sender
#: that sees it (``HopAck.reason``, ``ErrorReply.code``) may answer with the tier's fallback.
UNAVAILABLE = "upstream_unavailable"
#: Idle connections are closed before the provider closes them: a request sent on a connection
#: the server is closing at that moment fails. uvicorn (``vllm serve``) closes them after 5 s.
KEEPALIVE_S = 4.0
#: The longest ``Retry-After`` honoured; a provider asking for more is treated as down.
MAX_RETRY_AFTER_S = 30.0


@dataclass(frozen=True)
class UpstreamJob:
    request_id: str
    body: bytes
    stream: bool
    prompt_estimate: int

    @property
    def prompt_tokens(self) -> int:
        return 0  # the provider counts them; nothing is known before it answers


class Failure(Exception):
    """One failed call to the provider, classified: what the client hears (``error``), the
    metric's ``outcome``, whether it may be sent again, and whether it says the provider is
    unwell (the breaker counts it) or the request was at fault (it does not)."""

    def __init__(self, error: SkinflintError, outcome: str, *, retryable: bool, counts: bool,
                 retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error, self.outcome, self.retryable, self.counts = error, outcome, retryable, counts
        self.retry_after = retry_after


def refused(tier: str, status: int, body: bytes, headers: Mapping[str, str], key_env: str | None) -> Failure:
    """The failure an HTTP error status from the provider means."""
    why = error_message(body, f"HTTP {status}")
    if status in (400, 404, 413, 422):
        return Failure(BadRequest(f"the model's provider refused the request: {why}", param=error_param(body)),
                       "client_error", retryable=False, counts=False)
    if status in (401, 403):
        fix = f"check the key in {key_env}" if key_env else "the tier has no api_key_env to send a key from"
        return Failure(SkinflintError(f"tier {tier!r}: the provider refused the API key (HTTP {status}: {why}); {fix}",
                                      status=502, code="upstream_auth"),
                       "auth_error", retryable=False, counts=True)
    if status == 408 or status == 429 or status >= 500:
        outcome = "rate_limited" if status == 429 else "server_error"
        return Failure(Unavailable(f"tier {tier!r}: the provider answered HTTP {status}: {why}", code=UNAVAILABLE),
                       outcome, retryable=True, counts=True, retry_after=_retry_after(headers))
    return Failure(SkinflintError(f"tier {tier!r}: the provider answered HTTP {status}: {why}", status=502,
                                  code="upstream_error"), "server_error", retryable=False, counts=False)


def failed(tier: str, exc: BaseException, timeout_s: float) -> Failure:
    """The failure an exception while calling the provider means."""
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, TimeoutError):  # aiohttp's connect and read timeouts are TimeoutErrors
        return Failure(Timeout(f"tier {tier!r}: the provider sent nothing for {timeout_s:g} s",
                               code="upstream_timeout"), "timeout", retryable=True, counts=True)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return Failure(Unavailable(f"tier {tier!r}: the connection to the provider failed: {_describe(exc)}",
                                   code=UNAVAILABLE), "connection_error", retryable=True, counts=True)
    if isinstance(exc, ProviderError):
        return Failure(SkinflintError(f"tier {tier!r}: the provider failed while answering: {exc}", status=502,
                                      code="upstream_error"), "server_error", retryable=False, counts=True)
    if isinstance(exc, ProviderProtocolError):
        return Failure(SkinflintError(f"tier {tier!r}: {exc}", status=502, code="upstream_error"),
                       "bad_answer", retryable=False, counts=True)
    raise exc


def backoff(attempt: int, base_s: float, rng: Callable[[], float], retry_after: float | None = None) -> float:
    """Delay before retry ``attempt`` (0 first): ``base_s`` doubled each time, jittered by ±50%
    so that clients failed together do not come back together; never less than what the
    provider asked for (``Retry-After``)."""
    delay = base_s * (2 ** attempt) * (0.5 + rng())
    return max(delay, retry_after or 0.0)


class UpstreamBackend:
    """A tier answered by an OpenAI-compatible provider. Create it inside the running event loop."""

    def __init__(self, tier: str, options: UpstreamOptions, api_key: str | None, *,
                 rng: Callable[[], float] = random.random,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.tier = tier
        self.options = options
        self.breaker = CircuitBreaker(options.breaker.failures, options.breaker.open_s)
        self._rng, self._sleep = rng, sleep
        self._url = options.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json", **options.headers}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # sock_connect, not connect: waiting for a free pooled connection is not the provider's fault.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=options.connect_timeout_s,
                                        sock_read=options.timeout_s)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=options.max_connections, keepalive_timeout=KEEPALIVE_S),
            headers=headers, timeout=timeout, raise_for_status=False)
        self._inflight: dict[str, aiohttp.ClientResponse] = {}
        metrics.UPSTREAM_BREAKER_STATE.labels(tier).set_function(lambda: self.breaker.state)

    # --- Backend --------------------------------------------------------------------------
    def unavailable(self) -> str | None:
        if self.breaker.would_allow():
            return None
        b = self.breaker
        if b.state is State.OPEN:
            when = f"the circuit breaker is open for another {b.reopens_in():.1f} s"
        else:
            when = "the circuit breaker is half-open: one request is checking whether it is back"
        return (f"{UNAVAILABLE}: tier {self.tier!r}: its provider is down ({when}; last failure: "
                f"{b.last_failure or 'unknown'})")

    def prepare(self, env: TaskEnvelope, who: WorkerIdentity) -> UpstreamJob:
        req = env.request
        # Bulk results are stored whole: one JSON body is all a bulk task needs.
        stream = req.stream and env.priority is Priority.INTERACTIVE
        max_tokens = req.token_limit or who.default_max_tokens
        body = json.dumps(request_body(req, self.options.model, max_tokens, stream), separators=(",", ":"))
        return UpstreamJob(env.request_id, body.encode(), stream, prompt_estimate(req))

    async def stream(self, job: UpstreamJob) -> AsyncIterator[EngineStep]:
        """The answer's steps; see the module docstring for retries and the breaker."""
        span = trace.get_current_span()
        if not self.breaker.acquire():
            metrics.UPSTREAM_REQUESTS.labels(self.tier, "breaker_open").inc()
            span.set_attribute("sf.upstream.outcome", "breaker_open")
            raise Unavailable(self.unavailable() or f"{UNAVAILABLE}: tier {self.tier!r}: its provider is down",
                              code=UNAVAILABLE)
        span.set_attribute("sf.upstream.breaker", self.breaker.state.name.lower())
        started = time.monotonic()
        attempt, sent, outcome = 0, False, "aborted"
        try:
            while True:
                try:
                    async with contextlib.aclosing(self._call(job)) as steps:
                        async for step in steps:
                            sent = True
                            yield step
                    outcome = "ok"
                    self.breaker.success()
                    return
                except (Failure, TimeoutError, aiohttp.ClientError, OSError, ProviderError,
                        ProviderProtocolError) as exc:
                    failure = failed(self.tier, exc, self.options.timeout_s)
                if failure.retryable and not sent and attempt < self.options.retries:
                    delay = backoff(attempt, self.options.backoff_s, self._rng, failure.retry_after)
                    log.warning("%s: %s; retry %d of %d in %.2f s", job.request_id, failure,
                                attempt + 1, self.options.retries, delay)
                    metrics.UPSTREAM_RETRIES.labels(self.tier).inc()
                    attempt += 1
                    await self._sleep(delay)
                    continue
                outcome = failure.outcome
                if failure.counts:
                    self.breaker.failure(str(failure))
                else:
                    self.breaker.success()  # the provider answered: it is up
                if failure.retryable and attempt:
                    failure.error.message += f" (after {attempt + 1} attempts)"
                log.warning("%s: %s (%s)", job.request_id, failure, self._url)
                raise failure.error
        finally:
            if outcome == "aborted":
                self.breaker.release()
            metrics.UPSTREAM_REQUESTS.labels(self.tier, outcome).inc()
            metrics.UPSTREAM_DURATION.labels(self.tier).observe(time.monotonic() - started)
            span.set_attribute("sf.upstream.retries", attempt)
            span.set_attribute("sf.upstream.outcome", outcome)

    async def abort(self, request_id: str) -> None:
        """Close the request's connection: the provider sees the client gone and stops generating."""
        response = self._inflight.pop(request_id, None)
        if response is not None:
            response.close()

    async def close(self) -> None:
        for response in self._inflight.values():
            response.close()
        await self._session.close()

    # --- one attempt ----------------------------------------------------------------------
    async def _call(self, job: UpstreamJob) -> AsyncGenerator[EngineStep, None]:
        async with self._session.post(self._url, data=job.body) as response:
            self._inflight[job.request_id] = response
            try:
                if response.status >= 400:
                    raise refused(self.tier, response.status, await response.read(), response.headers,
                                  self.options.api_key_env)
                if not job.stream:
                    yield whole_answer(await response.read())
                    return
                parser, state = SseParser(), StreamState(job.prompt_estimate)
                # readany: whatever has arrived, so events already waiting become one step.
                while data := await response.content.readany():
                    step = state.read(parser.feed(data))
                    if step is not None:
                        yield step
                    if state.done:
                        return
                if state.finish_reason is None:
                    raise aiohttp.ClientPayloadError("the provider ended the stream before the answer's end")
                yield state.step("", finished=True)  # no [DONE], but the answer had ended
            finally:
                self._inflight.pop(job.request_id, None)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare from APIs; the backoff applies
    return None if seconds is None or seconds < 0 else min(seconds, MAX_RETRY_AFTER_S)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
