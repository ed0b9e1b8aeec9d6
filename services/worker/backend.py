"""What answers a worker's tasks: the seam between ``generation.answer`` and a model.

A ``Backend`` prepares a task (checks it, turns it into its own terms) and streams the answer
as ``EngineStep``s. Two implement it: ``EngineBackend``, the in-process vLLM engine (a
self-hosted tier), and ``services.worker.upstream.UpstreamBackend``, an OpenAI-compatible HTTP
provider (an upstream tier). Plain logic: no bus code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from contracts.subjects import Priority
from contracts.v1 import TaskEnvelope
from services.shared.errors import BadRequest
from services.worker.engine import Engine, EngineStep, GenerationParams

#: vLLM serves a lower value first.
ENGINE_PRIORITY = {Priority.INTERACTIVE: 0, Priority.BULK: 10}


@dataclass(frozen=True)
class WorkerIdentity:
    worker_id: str
    tier: str
    model_name: str
    default_max_tokens: int


class Job(Protocol):
    """A task prepared for a backend."""

    @property
    def request_id(self) -> str: ...

    @property
    def prompt_tokens(self) -> int:
        """The prompt's tokens as known before any output: charged when the backend never reports
        its own counts (exact for the engine; 0 for a provider, which counts them itself)."""
        ...


J = TypeVar("J", bound=Job)


class Backend(Protocol[J]):
    """What ``answer`` needs from whatever generates the answer.

    ``prepare`` raises a ``SkinflintError`` (a 400) for a task it cannot take, before anything is
    spent. ``stream`` yields steps until one has ``finished=True`` (token counts cumulative);
    it raises a ``SkinflintError`` for a failure the client should hear as such (a provider
    refusing the request, a provider down), anything else for a failure of its own. Closing the
    iteration, or ``abort``, stops the generation and frees what it held.
    """

    def unavailable(self) -> str | None:
        """Why no task should be handed to this backend now (None: it takes them)."""
        ...

    def prepare(self, env: TaskEnvelope, who: WorkerIdentity) -> J: ...

    def stream(self, job: J) -> AsyncIterator[EngineStep]: ...

    async def abort(self, request_id: str) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class EngineJob:
    request_id: str
    prompt: list[int]
    params: GenerationParams
    priority: int

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt)


def plan(env: TaskEnvelope, engine: Engine, who: WorkerIdentity) -> tuple[list[int], GenerationParams]:
    """Render the prompt and decide the sampling parameters; reject what cannot fit."""
    req = env.request
    prompt = engine.render(req.messages)
    room = engine.max_model_len - len(prompt)
    if room < 1:
        raise BadRequest(
            f"the conversation is {len(prompt)} tokens; this model takes at most "
            f"{engine.max_model_len} tokens of prompt and answer together. Shorten the messages.",
            param="messages", code="context_length_exceeded",
        )
    wanted = req.token_limit
    if wanted is not None and wanted > room:
        raise BadRequest(
            f"max_tokens is {wanted}, but only {room} tokens are left after the "
            f"{len(prompt)}-token prompt (context length {engine.max_model_len})",
            param="max_tokens", code="context_length_exceeded",
        )
    params = GenerationParams(
        max_tokens=wanted if wanted is not None else min(who.default_max_tokens, room),
        temperature=req.temperature,
        top_p=req.top_p,
        stop=req.stop_list,
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        json_object=req.response_format is not None and req.response_format.type == "json_object",
        json_schema=req.response_format.schema_constraint if req.response_format is not None else None,
    )
    return prompt, params


class EngineBackend:
    """A self-hosted tier: the worker's own inference engine (``engine``: vLLM, or a fake in tests)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def unavailable(self) -> str | None:
        return None

    def prepare(self, env: TaskEnvelope, who: WorkerIdentity) -> EngineJob:
        prompt, params = plan(env, self.engine, who)
        return EngineJob(env.request_id, prompt, params, ENGINE_PRIORITY[env.priority])

    def stream(self, job: EngineJob) -> AsyncIterator[EngineStep]:
        return self.engine.stream(job.request_id, job.prompt, job.params, job.priority)

    async def abort(self, request_id: str) -> None:
        await self.engine.abort(request_id)

    async def close(self) -> None:
        await self.engine.close()
