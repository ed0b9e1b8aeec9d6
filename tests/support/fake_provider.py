"""An OpenAI-compatible chat provider in the test's own event loop (aiohttp), scripted per test.

It answers ``POST /v1/chat/completions`` with ``WORDS`` (as much as ``max_tokens`` allows): one
JSON body, or server-sent events written in ``writes`` (byte strings cut wherever the test likes,
so events arrive split across reads or several in one). ``fail`` queues error answers for the
next requests; ``delay_s`` holds an answer back (a slow provider). It records every request's
body and headers, and the requests whose client went away before the answer was written.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

WORDS = ["Paris", " is", " the", " capital", " of", " France", "."]
USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18, "prompt_tokens_details": {"cached_tokens": 3}}


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def stream_events(words: list[str], finish_reason: str, usage: dict[str, Any] | None) -> list[bytes]:
    """The events of a streamed answer, as OpenAI sends them (role first, usage last)."""
    events = [sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})]
    events += [sse({"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}) for w in words]
    events.append(sse({"choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}]}))
    if usage is not None:
        events.append(sse({"choices": [], "usage": usage}))
    events.append(sse("[DONE]"))
    return events


@dataclass
class FakeProvider:
    #: How a streamed answer's bytes are cut into writes: None, one write per event; "bytes", one
    #: write per 7 bytes (events split mid-line); "all", the whole stream in one write.
    cut: str | None = None
    delay_s: float = 0.0
    #: Pause between a streamed answer's writes (the first waits for it too).
    write_pause_s: float = 0.001
    #: A streamed answer's connection is cut after this many writes (a provider that died mid-answer).
    drop_after: int | None = None
    usage: dict[str, Any] | None = field(default_factory=lambda: dict(USAGE))
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    #: Requests whose client hung up before the whole answer was written.
    hung_up: list[dict[str, Any]] = field(default_factory=list)
    _failures: deque[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=deque)
    _runner: web.AppRunner | None = None
    port: int = 0

    def fail(self, status: int, message: str = "scripted failure", times: int = 1, param: str | None = None,
             headers: dict[str, str] | None = None) -> None:
        """The next ``times`` requests get ``status`` with an OpenAI error body."""
        body = {"error": {"message": message, "type": "error", "param": param, "code": status}}
        for _ in range(times):
            self._failures.append((status, body, headers or {}))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self, port: int = 0) -> FakeProvider:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self._failures:
            status, error, headers = self._failures.popleft()
            return web.json_response(error, status=status, headers=headers)
        words = WORDS[: body.get("max_tokens", len(WORDS))]
        finish = "length" if len(words) < len(WORDS) else "stop"
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if not body.get("stream"):
                answer = {"id": "c1", "object": "chat.completion", "model": body["model"],
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)},
                                       "finish_reason": finish}]}
                if self.usage is not None:
                    answer["usage"] = self.usage
                return web.json_response(answer)
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            events = stream_events(words, finish, self.usage)
            for i, write in enumerate(self._writes(events)):
                if i == self.drop_after:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                await asyncio.sleep(self.write_pause_s)  # so that writes arrive as separate reads
                await response.write(write)
            await response.write_eof()
            return response
        except (ConnectionResetError, asyncio.CancelledError):
            self.hung_up.append(body)
            raise

    def _writes(self, events: list[bytes]) -> list[bytes]:
        if self.cut == "all":
            return [b"".join(events)]
        if self.cut == "bytes":
            whole = b"".join(events)
            return [whole[i:i + 7] for i in range(0, len(whole), 7)]
        return events
