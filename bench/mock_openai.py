"""A zero-latency OpenAI-compatible chat provider that costs as little CPU as it can.

``bench/gateway.py`` measures skinflint's upstream tier against this mock called directly, on a
2-core machine where every microsecond the mock spends is taken from the system under test. So
it is a raw ``asyncio.Protocol`` HTTP/1.1 server (on uvloop when installed) with keep-alive, and
every answer is pre-built bytes: a request costs one header scan, one ``json.loads`` of its
small body and one ``transport.write``.

    python -m bench.mock_openai --port 8100 [--chunks 64]

- ``POST /v1/chat/completions``: the same answer every time, ``chunks`` pieces of text
  (``answer_text``): one JSON body, or with ``"stream": true`` server-sent events in chunked
  encoding: ``chunks`` ``chat.completion.chunk`` events (the first also carries the role, the
  last the finish reason), a usage chunk when ``stream_options.include_usage`` is set, then
  ``data: [DONE]``; all written at once (zero latency). Usage: ``PROMPT_TOKENS`` prompt tokens,
  one completion token per chunk. The answer's ``model`` echoes the request's. A body that is
  not JSON or has no ``messages`` gets OpenAI's 400 error body.
- ``GET /v1/models``: the one model, ``MODEL``.
- ``GET /mock/stats``: requests answered so far (``{"chat": n, "streamed": m}``), so a bench can
  check that a gateway called it exactly once per request.

Requests must carry their body with ``Content-Length`` (aiohttp, httpx and the bench's own
client do); a chunked request body gets a 411 and the connection is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from typing import Any, cast

MODEL = "mock-model"
PROMPT_TOKENS = 12
CHUNKS = 64
#: Pre-built answers kept per (model, stream, include_usage); a bench uses one or two.
_MAX_CACHED = 64


def answer_pieces(chunks: int = CHUNKS) -> list[str]:
    """The answer's text, one piece per streamed chunk (a completion token each)."""
    return [f" word{i}" for i in range(chunks)]


def answer_text(chunks: int = CHUNKS) -> str:
    return "".join(answer_pieces(chunks))


def _usage(chunks: int) -> dict[str, int]:
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": chunks, "total_tokens": PROMPT_TOKENS + chunks}


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _head(status: str, content_type: bytes, length: int | None) -> bytes:
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    return b"HTTP/1.1 %s\r\nContent-Type: %s\r\n%s\r\n\r\n" % (status.encode(), content_type, framing)


def json_response(value: Any, status: str = "200 OK") -> bytes:
    body = _dumps(value)
    return _head(status, b"application/json", len(body)) + body


def completion_body(model: str, chunks: int) -> dict[str, Any]:
    return {"id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer_text(chunks)},
                         "finish_reason": "stop"}],
            "usage": _usage(chunks)}


def stream_events(model: str, chunks: int, include_usage: bool) -> list[bytes]:
    """The SSE events of a streamed answer, each ``data: ...\\n\\n``."""
    base = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": model}
    events = []
    for i, piece in enumerate(answer_pieces(chunks)):
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        finish = "stop" if i == chunks - 1 else None
        events.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    if include_usage:
        events.append({**base, "choices": [], "usage": _usage(chunks)})
    return [b"data: " + _dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


def stream_response(model: str, chunks: int, include_usage: bool) -> bytes:
    """Head and chunked body: one HTTP chunk per event, then the last (empty) chunk."""
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in stream_events(model, chunks, include_usage))
    return _head("200 OK", b"text/event-stream", None) + body + b"0\r\n\r\n"


def error_response(status: str, message: str, param: str | None = None) -> bytes:
    return json_response({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                    "code": None}}, status)


class MockState:
    """What every connection shares: the pre-built answers and the counts."""

    def __init__(self, chunks: int = CHUNKS) -> None:
        self.chunks = chunks
        self.chat = 0
        self.streamed = 0
        self._answers: dict[tuple[str, bool, bool], bytes] = {}
        self.models = json_response({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0,
                                                                 "owned_by": "bench"}]})

    def answer(self, body: bytes) -> bytes:
        """The whole response (head and body) to a chat request's body."""
        try:
            request = json.loads(body)
        except ValueError:
            return error_response("400 Bad Request", "the body is not JSON")
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            return error_response("400 Bad Request", "messages: a list of messages is required", "messages")
        model = request.get("model")
        model = model if isinstance(model, str) else MODEL
        stream = request.get("stream") is True
        options = request.get("stream_options")
        include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
        key = (model, stream, include_usage)
        answer = self._answers.get(key)
        if answer is None:
            if len(self._answers) >= _MAX_CACHED:
                self._answers.clear()
            answer = self._answers[key] = (stream_response(model, self.chunks, include_usage) if stream
                                           else json_response(completion_body(model, self.chunks)))
        self.chat += 1
        self.streamed += stream
        return answer

    def respond(self, method: bytes, path: bytes, body: bytes) -> bytes:
        if path == b"/v1/chat/completions":
            if method != b"POST":
                return error_response("405 Method Not Allowed", "use POST")
            return self.answer(body)
        if method == b"GET" and path == b"/v1/models":
            return self.models
        if method == b"GET" and path == b"/mock/stats":
            return json_response({"chat": self.chat, "streamed": self.streamed})
        return error_response("404 Not Found", f"no route {method.decode(errors='replace')} "
                                               f"{path.decode(errors='replace')}")


class MockProtocol(asyncio.Protocol):
    """One keep-alive connection: requests parsed from whatever arrives (pipelined ones too),
    each answered with one write."""

    def __init__(self, state: MockState) -> None:
        self.state = state
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        out, self.buffer, close = handle(self.state, self.buffer + data if self.buffer else data)
        transport = self.transport
        assert transport is not None
        if out:
            transport.write(out)
        if close:
            transport.close()


def handle(state: MockState, buffer: bytes) -> tuple[bytes, bytes, bool]:
    """Answer every complete request in ``buffer``: (bytes to write, what is left of ``buffer``,
    whether to close the connection after writing)."""
    out = []
    while (end := buffer.find(b"\r\n\r\n")) >= 0:
        head = buffer[:end].lower()
        line_end = head.find(b"\r\n")
        parts = buffer[:line_end if line_end >= 0 else end].split(b" ")
        if len(parts) != 3:
            out.append(error_response("400 Bad Request", "malformed request line"))
            return b"".join(out), b"", True
        length = _content_length(head)
        if length is None:
            out.append(error_response("411 Length Required", "send the body with Content-Length"))
            return b"".join(out), b"", True
        if len(buffer) < end + 4 + length:
            break  # the body is still arriving
        body = buffer[end + 4:end + 4 + length]
        buffer = buffer[end + 4 + length:]
        out.append(state.respond(parts[0], parts[1].split(b"?", 1)[0], body))
        if b"\r\nconnection: close" in head:
            return b"".join(out), b"", True
    return b"".join(out), buffer, False


def _content_length(head: bytes) -> int | None:
    """The body's length from a lower-cased request head: 0 without a body, None for a chunked one."""
    if b"\r\ntransfer-encoding:" in head:
        return None
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    end = head.find(b"\r\n", at + 2)
    try:
        return int(head[at + 17:end if end >= 0 else len(head)])
    except ValueError:
        return None


async def serve(port: int, chunks: int = CHUNKS, host: str = "127.0.0.1") -> asyncio.Server:
    state = MockState(chunks)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: MockProtocol(state), host, port, backlog=1024, reuse_address=True)


async def _main(port: int, chunks: int) -> None:
    server = await serve(port, chunks)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mock_openai", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=CHUNKS, help=f"pieces of a streamed answer (default {CHUNKS})")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # plain asyncio: works, costs more CPU
        run = asyncio.run
    else:
        run = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        run(_main(args.port, args.chunks))


if __name__ == "__main__":
    main()
