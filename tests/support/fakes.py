"""A deterministic stand-in for vLLM, for unit, component and integration tests.

It "tokenizes" by words and answers by echoing a fixed reply word by word, at a configurable
pace, so tests can hold a request in flight long enough to kill or drain a worker. Like vLLM's
grammar backend, it refuses a ``json_schema`` with a keyword it cannot enforce (here: ``not``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from contracts.v1 import Accepted, ChatMessage, Chunk, ErrorReply, Final, TaskEnvelope, UsageEvent
from services.worker.engine import EngineStep, GenerationParams, refusal

REPLY = ["Paris", "is", "the", "capital", "of", "France", "and", "its", "largest", "city", "by", "far", "today"]


class FakeEngine:
    def __init__(self, max_model_len: int = 256, seconds_per_token: float = 0.0,
                 fail_after: int | None = None, first_token_s: float = 0.0) -> None:
        self.max_model_len = max_model_len
        self.seconds_per_token = seconds_per_token
        #: Extra time before the first token (the prompt's prefill).
        self.first_token_s = first_token_s
        self.fail_after = fail_after
        self.aborted: list[str] = []
        self.priorities: list[int] = []
        #: The parameters of every request it was asked to generate, in order.
        self.params: list[GenerationParams] = []
        self.closed = False

    def render(self, messages: Sequence[ChatMessage]) -> list[int]:
        words = [w for m in messages for w in f"<{m.role}> {m.content}".split()]
        return [hash(w) % 50_000 for w in words] + [0]

    async def stream(self, request_id: str, prompt: list[int], params: GenerationParams,
                     priority: int) -> AsyncIterator[EngineStep]:
        self.priorities.append(priority)
        self.params.append(params)
        if params.json_schema is not None and "not" in params.json_schema:
            raise refusal(ValueError('Grammar error: Unimplemented keys: ["not"]'), params)
        n = min(params.max_tokens, len(REPLY))
        if self.first_token_s:
            await asyncio.sleep(self.first_token_s)
        for i in range(n):
            if self.fail_after is not None and i >= self.fail_after:
                raise RuntimeError("fake engine failure")
            if self.seconds_per_token:
                await asyncio.sleep(self.seconds_per_token)
            last = i == n - 1
            yield EngineStep(
                delta=("" if i == 0 else " ") + REPLY[i], finished=last,
                finish_reason=("length" if n < len(REPLY) else "stop") if last else None,
                prompt_tokens=len(prompt), cached_prompt_tokens=0, completion_tokens=i + 1,
            )

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def close(self) -> None:
        self.closed = True


class ListSink:
    """The worker's reply sink, in memory: what ``answer`` sent, in order."""

    def __init__(self) -> None:
        self.replies: list[Accepted | Chunk | Final | ErrorReply] = []
        self.usages: list[UsageEvent] = []
        self.announced: list[Final] = []
        #: Everything sent, in order: ("reply", type name), ("usage", status) or ("announce", request id).
        self.sent: list[tuple[str, str]] = []

    async def reply(self, env: TaskEnvelope, message: Accepted | Chunk | Final | ErrorReply) -> None:
        self.replies.append(message)
        self.sent.append(("reply", type(message).__name__))

    async def usage(self, event: UsageEvent) -> None:
        self.usages.append(event)
        self.sent.append(("usage", event.status))

    async def announce(self, env: TaskEnvelope, final: Final) -> None:
        self.announced.append(final)
        self.sent.append(("announce", env.request_id))
