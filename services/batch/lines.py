"""Reading an OpenAI Batch input file: JSONL, one request a line, checked line by line.

Each line is ``{"custom_id": str, "method": "POST", "url": "/v1/chat/completions", "body": {...}}``.
Unlike OpenAI, which fails a whole batch for one bad line, a bad line here fails only itself: it
becomes a ``LineError`` (written to the job's error file) and every other line still runs. Only
what concerns the whole file (too large, too many requests, empty) refuses the file.

Files are read as a stream of byte chunks, so a large upload is never held whole: ``scan`` counts
requests and checks the file-wide limits in one cheap pass (no JSON parsing), ``parse_file``
yields one result per request, keeping only the custom_ids seen (to refuse duplicates).

Numbering: ``line`` is the 1-based physical line (what an editor shows); ``index`` is the 0-based
position among requests. Lines holding only whitespace are not requests: they are skipped, as
JSONL readers do with a trailing newline. A job identifies its items by ``index``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from contracts.v1 import BulkLine, ChatRequest

# The one place a chat body is validated (field policy included), so a batch line is refused exactly
# as POST /v1/chat/completions would refuse it. Its module pulls in FastStream and NATS when imported;
# moving it to a plain module of ingress would keep this one free of them.
from services.ingress.gateway import parse_chat_request
from services.shared.errors import BadRequest, PayloadTooLarge

#: The endpoint every line of a skinflint batch calls (OpenAI: one endpoint per batch).
CHAT_ENDPOINT = "/v1/chat/completions"
#: The endpoints OpenAI runs batches on: a line naming one of these (but not the batch's) is a
#: mismatch; any other URL is not an endpoint at all.
OPENAI_BATCH_ENDPOINTS = frozenset({
    "/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/moderations",
    "/v1/images/generations", "/v1/images/edits", "/v1/videos",
})


@dataclass(frozen=True)
class InputLimits:
    """What one input file may hold; the batch service's settings pass them (OpenAI's as defaults)."""

    max_bytes: int = 200 * 1024 * 1024
    max_requests: int = 50_000
    max_custom_id_chars: int = 512


@dataclass(frozen=True)
class FileSummary:
    """What ``scan`` found: the file's size and how many requests it holds."""

    bytes: int
    requests: int


@dataclass(frozen=True)
class LineItem:
    """A request that passed every check: ready to be sent as a bulk task."""

    index: int
    line: int
    custom_id: str
    request: ChatRequest


@dataclass(frozen=True)
class LineError:
    """A line that failed. ``status`` None: the line broke the batch file's own rules (written as an
    error line with ``response: null``); a status: the chat endpoint itself refused the body, and
    the error line carries that status and OpenAI's error body, as a direct call would have."""

    index: int
    line: int
    custom_id: str | None
    code: str
    message: str
    param: str | None = None
    status: int | None = None

    def as_batch_error(self) -> dict[str, Any]:
        """As an entry of the Batch object's ``errors.data`` (OpenAI's ``BatchError``)."""
        return {"code": self.code, "line": self.line, "message": self.message, "param": self.param}


LineResult = LineItem | LineError


class FileRejected(BadRequest):
    """The file as a whole cannot be a batch (``code``: ``empty_file``, ``too_many_tasks``)."""


class FileTooLarge(PayloadTooLarge):
    code = "file_too_large"


def split_lines(chunks: Iterable[bytes], max_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line number, line)`` for every line of the file, without its end of line (``\\n`` or
    ``\\r\\n``). Raises ``FileTooLarge`` as soon as more than ``max_bytes`` have come in, so an
    oversized upload is never read to its end."""
    seen = 0
    number = 0
    pending = b""
    for chunk in chunks:
        seen += len(chunk)
        if seen > max_bytes:
            raise FileTooLarge(f"the file is larger than {max_bytes} bytes; split it into several batches")
        parts = (pending + chunk).split(b"\n")
        pending = parts.pop()
        for part in parts:
            number += 1
            yield number, part.removesuffix(b"\r")
    if pending:
        yield number + 1, pending.removesuffix(b"\r")


def _requests(chunks: Iterable[bytes], max_bytes: int) -> Iterator[tuple[int, int, bytes]]:
    """``(index, line number, line)`` of every line that is a request (not only whitespace)."""
    index = 0
    for number, raw in split_lines(chunks, max_bytes):
        if raw.strip():
            yield index, number, raw
            index += 1


def _too_many(limits: InputLimits) -> FileRejected:
    return FileRejected(f"the file holds more than {limits.max_requests} requests; split it into several "
                        "batches", code="too_many_tasks")


def scan(chunks: Iterable[bytes], limits: InputLimits) -> FileSummary:
    """Check the file-wide limits (size, number of requests, not empty) without parsing a line.

    Raises ``FileTooLarge`` (413) or ``FileRejected`` (400, code ``too_many_tasks`` or ``empty_file``)."""
    size = 0
    count = 0

    def counted() -> Iterator[bytes]:
        nonlocal size
        for chunk in chunks:
            size += len(chunk)
            yield chunk

    for _ in _requests(counted(), limits.max_bytes):
        count += 1
        if count > limits.max_requests:
            raise _too_many(limits)
    if count == 0:
        raise FileRejected("the file holds no requests; put one JSON request on each line", code="empty_file")
    return FileSummary(bytes=size, requests=count)


def parse_file(chunks: Iterable[bytes], limits: InputLimits, *, endpoint: str = CHAT_ENDPOINT,
               model: str | None = None) -> Iterator[LineResult]:
    """One ``LineItem`` or ``LineError`` per request, in file order.

    ``model``: the model every line must name (OpenAI: one model per batch); None takes the first
    valid line's. The file-wide limits raise as in ``scan`` (run ``scan`` first so that a file
    over a limit is refused before any of its lines is acted on)."""
    checker = LineChecker(limits, endpoint=endpoint, model=model)
    for index, number, raw in _requests(chunks, limits.max_bytes):
        if index >= limits.max_requests:
            raise _too_many(limits)
        yield checker.check(index, number, raw)


class LineChecker:
    """Checks lines one by one, remembering what a job-wide rule needs: the custom_ids seen (each
    must be unique) and the job's model (every line must name the same).

    The same checks serve both entry points: ``check`` takes a line of an input file,
    ``check_message`` a ``BulkLine`` from the bus (``unit="message"``: errors then say "message N",
    N being its 1-based position in the job)."""

    def __init__(self, limits: InputLimits, *, endpoint: str = CHAT_ENDPOINT, model: str | None = None,
                 unit: str = "line") -> None:
        self.limits = limits
        self.unit = unit
        self.endpoint = endpoint
        #: The batch's model: given, or the first valid line's.
        self.model = model
        self._seen: set[str] = set()

    def check(self, index: int, line: int, raw: bytes) -> LineResult:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            return LineError(index, line, None, "invalid_json_line",
                             f"{self.unit} {line}: this line is not valid JSON ({exc.msg} at column {exc.colno}); "
                             "put one JSON object on each line")
        except UnicodeDecodeError:
            return LineError(index, line, None, "invalid_json_line",
                             f"{self.unit} {line}: this line is not UTF-8 text; save the file as UTF-8")
        if not isinstance(data, dict):
            return LineError(index, line, None, "invalid_json_line",
                             f"{self.unit} {line}: this line is JSON but not an object; "
                             "put one JSON object on each line")
        custom_id = self._custom_id(index, line, data)
        if isinstance(custom_id, LineError):
            return custom_id
        problem = self._envelope(index, line, custom_id, data)
        return problem if problem is not None else self._body(index, line, custom_id, data["body"])

    def check_message(self, index: int, message: BulkLine) -> LineResult:
        """A bulk message (already a ``BulkLine``: it has a custom_id and an object body) as item
        ``index`` of its job: the custom_id and body checks of a file's line."""
        custom_id = self._custom_id(index, index + 1, {"custom_id": message.custom_id})
        if isinstance(custom_id, LineError):
            return custom_id
        return self._body(index, index + 1, custom_id, message.body)

    def _custom_id(self, index: int, line: int, data: dict[str, Any]) -> str | LineError:
        value = data.get("custom_id")
        if value is None:
            return _missing(self.unit, index, line, None, "custom_id")
        if not isinstance(value, str) or not value or len(value) > self.limits.max_custom_id_chars:
            return LineError(index, line, None, "invalid_request",
                             f"{self.unit} {line}: custom_id must be a non-empty string of at most "
                             f"{self.limits.max_custom_id_chars} characters", "custom_id")
        if value in self._seen:
            return LineError(index, line, value, "duplicate_custom_id",
                             f"{self.unit} {line}: the custom_id {value!r} is already used by an earlier request; "
                             "give every request its own", "custom_id")
        self._seen.add(value)
        return value

    def _envelope(self, index: int, line: int, custom_id: str, data: dict[str, Any]) -> LineError | None:
        for name in ("method", "url", "body"):
            if data.get(name) is None:
                return _missing(self.unit, index, line, custom_id, name)
        if data["method"] != "POST":
            return LineError(index, line, custom_id, "invalid_request",
                             f"{self.unit} {line}: method must be \"POST\", not {data['method']!r}", "method")
        url = data["url"]
        if url != self.endpoint:
            code = "url_mismatch" if url in OPENAI_BATCH_ENDPOINTS else "invalid_url"
            return LineError(index, line, custom_id, code,
                             f"{self.unit} {line}: url must be this batch's endpoint {self.endpoint!r}, "
                             f"not {url!r}", "url")
        if not isinstance(data["body"], dict):
            return LineError(index, line, custom_id, "invalid_request",
                             f"{self.unit} {line}: body must be a JSON object (a chat completion request)", "body")
        return None

    def _body(self, index: int, line: int, custom_id: str, body: dict[str, Any]) -> LineResult:
        if body.get("stream"):
            return LineError(index, line, custom_id, "unsupported_value",
                             f"{self.unit} {line}: body.stream: a batch request cannot be streamed; remove it "
                             "or set it to false", "body.stream")
        try:
            request = parse_chat_request(body)
        except BadRequest as err:
            # As POST /v1/chat/completions answers this body: same status, code, message, param.
            return LineError(index, line, custom_id, err.code, err.message, err.param, status=err.status)
        if self.model is None:
            self.model = request.model
        elif request.model != self.model:
            return LineError(index, line, custom_id, "model_mismatch",
                             f"{self.unit} {line}: body.model is {request.model!r} but this batch's model is "
                             f"{self.model!r}; a batch runs one model: put other models' requests in their "
                             "own batch", "body.model")
        return LineItem(index, line, custom_id, request)


def _missing(unit: str, index: int, line: int, custom_id: str | None, name: str) -> LineError:
    return LineError(index, line, custom_id, "missing_required_parameter",
                     f"{unit} {line}: {name} is required (each line holds custom_id, method, url and body)", name)
