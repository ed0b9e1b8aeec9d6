"""The OpenAI-style chat request as skinflint carries it, validated once at ingress."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts.v1.json_schema import check_json_schema

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


class JsonSchemaFormat(WireModel):
    """OpenAI's ``response_format.json_schema``: the schema the answer must satisfy."""

    # Dumped as ``schema`` on the bus too: ``schema`` shadows a BaseModel attribute in Python.
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    name: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
        description="Name of the response format (a-z, A-Z, 0-9, _ and -, at most 64 characters).",
    )
    schema_: dict[str, Any] = Field(
        alias="schema",
        description="A JSON Schema (draft 2020-12 unless `$schema` names another draft). The answer is "
                    "generated under a grammar built from it, so a complete answer is valid against it.",
    )

    @field_validator("schema_", mode="after")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json_schema(value)
        return value


class ResponseFormat(WireModel):
    """OpenAI's ``response_format``: free text, any JSON object, or JSON valid against a schema."""

    type: Literal["text", "json_object", "json_schema"] = Field(
        description="`text` (default), `json_object` (the answer is a JSON object) or `json_schema` "
                    "(the answer is JSON valid against `json_schema.schema`).",
    )
    json_schema: JsonSchemaFormat | None = Field(
        default=None, description="The schema; required with type `json_schema`, refused with the others.",
    )

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a json_schema object with a name and a schema")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError(f"json_schema is only read with type 'json_schema', not {self.type!r}; "
                             "remove it or change the type")
        return self

    @property
    def schema_constraint(self) -> dict[str, Any] | None:
        """The JSON Schema the answer must satisfy, or None."""
        return self.json_schema.schema_ if self.json_schema is not None else None


class ChatRequest(WireModel):
    """``POST /v1/chat/completions`` body: the subset of OpenAI's fields skinflint honours.

    Fields OpenAI defines but skinflint cannot honour (``n`` > 1, tools, logprobs) are rejected
    with a 400 rather than silently ignored, so a client never gets an answer to a question it
    did not ask. Like every wire model it ignores fields it does not know (forward compatibility
    on the bus); ingress refuses those before parsing (``services.ingress.fields``).
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
    user: str | None = Field(
        default=None, description="End-user id (OpenAI uses it against abuse); accepted, changes nothing."
    )
    tools: list[Any] | None = Field(default=None, description="Not supported yet: must be absent or empty.")
    logprobs: bool | None = Field(default=None, description="Not supported: must be absent or false.")
    response_format: ResponseFormat | None = Field(
        default=None,
        description="Constrain the answer to JSON (`json_object`) or to a JSON Schema (`json_schema`). "
                    "An answer cut short by max_tokens (finish_reason `length`) is incomplete JSON.",
    )

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
