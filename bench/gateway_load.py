"""The load generator of ``bench/gateway.py``: a cheap HTTP/1.1 keep-alive client that checks
every answer.

It runs on the same two cores as the system it measures, so it is kept cheap: a raw
``asyncio.Protocol`` per connection with httptools' C parser (llhttp, what uvicorn uses),
pre-built request bytes, and one future per request. Its own CPU time per request is measured
(``LoadResult.cpu_us_per_request``: the event loop thread's CPU, ``time.thread_time``) and
printed beside the figures.

Every answer is checked (``check_json``, ``check_sse``): status 200, the body parses, the text
is the mock's, the usage is there and adds up; a stream must end with ``data: [DONE]``. Whatever
fails is counted as an error, with the first few reasons kept.

Load is a closed loop: ``connections`` clients, each sending its next request when its answer
has been read and checked, until a number of requests or a duration is reached.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import httptools

#: Errors whose reason is kept (the rest are only counted).
KEPT_ERRORS = 5


# --- requests and checks -------------------------------------------------------------------------

def chat_request(host: str, port: int, path: str, body: dict[str, Any], api_key: str | None = None) -> bytes:
    """A keep-alive ``POST`` of ``body`` as JSON, as bytes to write."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}Content-Type: application/json\r\n"
            f"Accept: */*\r\nContent-Length: {len(payload)}\r\n\r\n")
    return head.encode() + payload


def chat_body(model: str, stream: bool, max_tokens: int = 64) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Say something."}],
                            "max_tokens": max_tokens, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def _usage_error(usage: Any) -> str | None:
    if not isinstance(usage, dict):
        return "no usage"
    prompt, completion, total = (usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    if not (isinstance(prompt, int) and isinstance(completion, int) and isinstance(total, int)):
        return f"usage without integer counts: {usage}"
    if prompt + completion != total:
        return f"usage does not add up: {usage}"
    return None


def check_json(body: bytes, text: str) -> str | None:
    """Why a non-streamed answer is wrong (None: it is right): it must parse, hold ``text`` in
    ``choices[0].message.content`` and a usage that adds up."""
    try:
        answer = json.loads(body)
        content = answer["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return f"not a chat completion ({type(exc).__name__}): {body[:120]!r}"
    if content != text:
        return f"text differs: {content[:60]!r}..."
    return _usage_error(answer.get("usage"))


def check_sse(body: bytes, text: str, usage: bool = True) -> str | None:
    """Why a streamed answer (the SSE body, chunked encoding removed) is wrong (None: it is
    right): every event's data parses, their ``delta.content`` joined is ``text``, one event
    ends the answer with a ``finish_reason``, a usage chunk comes when ``usage``, and the last
    event is ``[DONE]`` with nothing after it."""
    parts: list[str] = []
    finished = seen_usage = False
    events = body.split(b"\n\n")
    if events[-1].strip():
        return f"the stream does not end with a blank line: {events[-1][-80:]!r}"
    events = [e for e in events[:-1] if e.strip()]
    if not events or events[-1].strip() != b"data: [DONE]":
        return "no data: [DONE] at the end"
    datas = []
    for event in events[:-1]:
        if not event.startswith(b"data: "):
            return f"an event that is not data: {event[:80]!r}"
        datas.append(event[6:])
    try:  # one parse for all events: a quarter of the CPU of one per event
        chunks = json.loads(b"[" + b",".join(datas) + b"]")
    except ValueError:
        bad = next((d for d in datas if not _parses(d)), b"")
        return f"an event that is not JSON: {bad[:80]!r}"
    for chunk in chunks:
        if not isinstance(chunk, dict):
            return f"an event that is not an object: {chunk!r:.80}"
        if "error" in chunk:
            return f"an error in the stream: {chunk['error']}"
        if chunk.get("usage"):
            if (why := _usage_error(chunk["usage"])) is not None:
                return why
            seen_usage = True
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                parts.append(content)
            if choice.get("finish_reason"):
                if finished:
                    return "two events with a finish_reason"
                finished = True
    if not finished:
        return "no event with a finish_reason"
    if usage and not seen_usage:
        return "no usage chunk"
    joined = "".join(parts)
    if joined != text:
        return f"text differs: {joined[:60]!r}... ({len(parts)} pieces)"
    return None


def _parses(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


# --- one connection ------------------------------------------------------------------------------

@dataclass
class Response:
    status: int
    body: bytes
    #: ``perf_counter_ns`` when the first byte of the body arrived (the head's for no body).
    first_ns: int
    #: skinflint's own ``x-skinflint-*`` headers (names lower-cased); no other header is kept.
    headers: dict[str, str] = field(default_factory=dict)


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time (``request``)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._body: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._first_ns = 0
        self.lost: BaseException | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, host, port)
        return conn

    async def request(self, data: bytes) -> Response:
        if self.transport is None or self.lost is not None:
            raise ConnectionError(f"the connection is closed ({self.lost})")
        self._waiter = asyncio.get_running_loop().create_future()
        self._body.clear()
        self._headers = {}
        self._first_ns = 0
        self.transport.write(data)
        return await self._waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("the server closed the connection")
        self._fail(self.lost)

    def _fail(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name[:12].lower() == b"x-skinflint-":
            self._headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self._first_ns = time.perf_counter_ns()

    def on_body(self, body: bytes) -> None:
        if not self._body:
            self._first_ns = time.perf_counter_ns()
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(Response(self._parser.get_status_code(), b"".join(self._body), self._first_ns,
                                             self._headers))


# --- load ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """Where to send requests and what answer to expect."""

    name: str
    host: str
    port: int
    request: bytes
    stream: bool
    text: str

    def check(self, response: Response) -> str | None:
        if response.status != 200:
            return f"HTTP {response.status}: {response.body[:160]!r}"
        return check_sse(response.body, self.text) if self.stream else check_json(response.body, self.text)


@dataclass
class LoadResult:
    target: str
    connections: int
    wall_s: float
    #: CPU seconds of the load generator's event loop thread during the run.
    cpu_s: float
    latencies_ms: list[float] = field(default_factory=list)
    first_byte_ms: list[float] = field(default_factory=list)
    #: The ``x-skinflint-*`` headers of each correct answer that had any.
    headers: list[dict[str, str]] = field(default_factory=list)
    errors: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        return len(self.latencies_ms) + self.errors

    @property
    def rps(self) -> float:
        """Correct answers per second."""
        return len(self.latencies_ms) / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / self.requests * 1e6 if self.requests else float("nan")

    def add_error(self, reason: str) -> None:
        self.errors += 1
        if len(self.reasons) < KEPT_ERRORS or reason in self.reasons:
            self.reasons[reason] += 1

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "connections": self.connections, "wall_s": self.wall_s, "cpu_s": self.cpu_s,
                "requests": self.requests, "errors": self.errors, "reasons": dict(self.reasons),
                "latencies_ms": self.latencies_ms, "first_byte_ms": self.first_byte_ms,
                "headers": self.headers}


async def run_load(target: Target, connections: int, *, requests: int | None = None,
                   duration_s: float | None = None) -> LoadResult:
    """A closed loop of ``connections`` clients until ``requests`` were sent or ``duration_s``
    has passed (whichever is given; both: whichever comes first). Connections are opened before
    the clock starts; one that breaks is opened again (the broken request is an error)."""
    if requests is None and duration_s is None:
        raise ValueError("give requests, duration_s or both")
    conns = [await Connection.open(target.host, target.port) for _ in range(connections)]
    result = LoadResult(target.name, connections, 0.0, 0.0)
    left = requests if requests is not None else -1
    started = time.perf_counter_ns()
    deadline = started + int(duration_s * 1e9) if duration_s is not None else None

    async def client(k: int) -> None:
        nonlocal left
        while left != 0 and (deadline is None or time.perf_counter_ns() < deadline):
            left -= 1
            t0 = time.perf_counter_ns()
            try:
                response = await conns[k].request(target.request)
            except (OSError, httptools.HttpParserError) as exc:
                result.add_error(f"{type(exc).__name__}: {exc}")
                conns[k].close()
                conns[k] = await Connection.open(target.host, target.port)
                continue
            done = time.perf_counter_ns()
            why = target.check(response)
            if why is None:
                result.latencies_ms.append((done - t0) / 1e6)
                result.first_byte_ms.append((response.first_ns - t0) / 1e6)
                if response.headers:
                    result.headers.append(response.headers)
            else:
                result.add_error(why)

    cpu = time.thread_time()
    try:
        await asyncio.gather(*(client(k) for k in range(connections)))
    finally:
        result.wall_s = (time.perf_counter_ns() - started) / 1e9
        result.cpu_s = time.thread_time() - cpu
        for conn in conns:
            conn.close()
    return result
