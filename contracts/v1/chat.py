"""The OpenAI-style chat request as skinflint carries it, validated once at ingress."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["system", "developer", "user", "assistant", "tool"]

#: Limits that keep one request from monopolising a worker; ingress reports them as 400s.
MAX_STOP_SEQUENCES = 4
MAX_MESSAGES = 512


class WireModel(BaseModel):
    """Base of every message on the bus: unknown fields are ignored so that newer producers
    (which may only add optional fields within a version) never break older consumers."""

    model_config = ConfigDict(extra="ignore", frozen=False)


class ChatMessage(WireModel):
    role: Role = Field(description="Who wrote the message, as in OpenAI's chat format.")
    content: str = Field(
        default="",
        description="The text of the message. OpenAI's list of text parts is accepted and joined.",
    )
    name: str | None = Field(default=None, description="Optional author name.")

    @field_validator("content", mode="before")
    @classmethod
    def _flatten_parts(cls, value: Any) -> Any:
        if value is None:
            return ""
        if isinstance(value, list):
            texts = []
            for part in value:
                if not isinstance(part, dict) or part.get("type") != "text":
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise ValueError(f"only text content parts are supported, got {kind!r}")
                text = part.get("text")
                if not isinstance(text, str):
                    raise ValueError("a text content part needs a string 'text'")
                texts.append(text)
            return "".join(texts)
        return value


class StreamOptions(WireModel):
    include_usage: bool = Field(
        default=False, description="Send a last chunk with token usage (OpenAI semantics)."
    )


class ChatRequest(WireModel):
    """``POST /v1/chat/completions`` body: the subset of OpenAI's fields skinflint honours.

    Fields OpenAI defines but skinflint cannot honour (``n`` > 1, tools, logprobs) are rejected
    with a 400 rather than silently ignored, so a client never gets an answer to a question it
    did not ask.
    """

    model: str = Field(min_length=1, description="Public model name; see GET /v1/models.")
    messages: list[ChatMessage] = Field(
        min_length=1, max_length=MAX_MESSAGES, description="The conversation so far."
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="Most tokens to generate (alias: max_completion_tokens)."
    )
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="OpenAI's newer name for max_tokens."
    )
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="Sampling temperature.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    n: int = Field(default=1, ge=1, le=1, description="Number of choices; only 1 is supported.")
    stop: str | list[str] | None = Field(default=None, description="Stop sequences (up to 4).")
    seed: int | None = Field(default=None, description="Sampling seed for reproducible output.")
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, description="OpenAI presence penalty.")
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, description="OpenAI frequency penalty.")
    stream: bool = Field(default=False, description="Answer as server-sent events.")
    stream_options: StreamOptions | None = Field(default=None, description="Streaming options.")
    user: str | None = Field(default=None, description="End-user id, recorded, never used for routing.")
    tools: list[Any] | None = Field(default=None, description="Not supported yet: must be absent or empty.")
    logprobs: bool | None = Field(default=None, description="Not supported: must be absent or false.")

    @field_validator("stop", mode="after")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        return value

    @field_validator("tools", mode="after")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("tool calls are not supported by skinflint yet")
        return value

    @field_validator("logprobs", mode="after")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("logprobs are not supported by skinflint yet")
        return value

    @model_validator(mode="after")
    def _one_max(self) -> ChatRequest:
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens disagree; send one of them")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)
