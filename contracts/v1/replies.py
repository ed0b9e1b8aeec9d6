"""What stages send back on a task's reply subject."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from contracts.v1.cache import CacheNote
from contracts.v1.chat import WireModel


class TokenUsage(WireModel):
    prompt_tokens: int = Field(ge=0, description="Tokens in the prompt the engine saw.")
    cached_prompt_tokens: int = Field(
        default=0, ge=0, description="Prompt tokens served from the engine's prefix cache."
    )
    completion_tokens: int = Field(ge=0, description="Tokens generated.")


class Accepted(WireModel):
    """A stage that will take long (inference) says who holds the task, so ingress can notice
    when that holder dies."""

    kind: Literal["accepted"] = "accepted"
    request_id: str = Field(description="The request this is about.")
    stage: str = Field(description="The stage that holds the task.")
    instance: str = Field(description="The replica that holds it (worker id).")
    cache: CacheNote | None = Field(
        default=None, description="What the cache stage did before (ingress tells the client before any chunk)."
    )
    tier: str | None = Field(default=None, description="The tier that answers (a routed request's pick).")
    model: str | None = Field(default=None, description="The public model name that answers.")


class Chunk(WireModel):
    kind: Literal["chunk"] = "chunk"
    request_id: str = Field(description="The request this is about.")
    seq: int = Field(ge=0, description="Position of this chunk in the stream.")
    delta: str = Field(description="New text since the previous chunk.")


class PathTimings(WireModel):
    """Wall-clock marks (Unix seconds) along one answer's path: where skinflint's own time goes.

    The worker that answers sets the middle four. The ingress that receives the final answer adds
    ``handed_off_at`` and ``received_at`` on its side; a worker never sends those. Differences
    between marks set by different hosts include their clock offset: read them on one host.
    """

    handed_off_at: float | None = Field(default=None, description="Ingress handed the task to the bus.")
    arrived_at: float | None = Field(default=None, description="The worker received the task.")
    engine_started_at: float | None = Field(default=None, description="The prompt went into the engine.")
    engine_finished_at: float | None = Field(default=None, description="The engine's last output came.")
    sent_at: float | None = Field(default=None, description="The worker sent the final answer.")
    received_at: float | None = Field(default=None, description="Ingress received the final answer.")


class Final(WireModel):
    kind: Literal["final"] = "final"
    request_id: str = Field(description="The request this is about.")
    text: str = Field(description="The whole answer.")
    finish_reason: Literal["stop", "length", "abort"] = Field(description="Why generation ended.")
    usage: TokenUsage = Field(description="Token counts reported by the engine.")
    model: str = Field(description="Public model name that answered.")
    tier: str = Field(description="Tier that answered.")
    served_by: str = Field(description="Replica that produced the answer.")
    queue_seconds: float = Field(default=0.0, description="Time waiting for a worker slot.")
    engine_seconds: float = Field(default=0.0, description="Time inside the engine (incl. its queue).")
    timings: PathTimings | None = Field(default=None, description="Marks along the path, for diagnostics.")
    cache: CacheNote | None = Field(default=None, description="What the cache stage did for this request.")


class ErrorReply(WireModel):
    kind: Literal["error"] = "error"
    request_id: str = Field(description="The request this is about.")
    status: int = Field(ge=400, le=599, description="HTTP status ingress should answer with.")
    code: str = Field(description="Machine-readable error code.")
    message: str = Field(description="What went wrong and what to do about it.")
    param: str | None = Field(default=None, description="The request field at fault, if any.")


Reply = Annotated[Accepted | Chunk | Final | ErrorReply, Field(discriminator="kind")]
REPLY_ADAPTER: TypeAdapter[Accepted | Chunk | Final | ErrorReply] = TypeAdapter(Reply)
