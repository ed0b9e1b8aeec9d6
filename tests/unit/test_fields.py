"""Ingress's field policy: every field is honoured, accepted as changing nothing, or refused by name."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionContentPartTextParam,
    ChatCompletionDeveloperMessageParam,
    ChatCompletionStreamOptionsParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionToolMessageParam,
    ChatCompletionUserMessageParam,
    completion_create_params,
)
from openai.types.shared_params import ResponseFormatJSONSchema
from openai.types.shared_params.response_format_json_schema import JSONSchema

from contracts.v1 import ChatRequest
from services.ingress.fields import HONOURED, NO_EFFECT, REFUSED, published_schema
from services.ingress.gateway import parse_chat_request
from services.shared.errors import BadRequest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def _refusal(body: dict[str, Any]) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse_chat_request(body)
    return info.value


#: OpenAI's request fields by path, as its Python SDK (the authority) defines them.
SDK_FIELDS: dict[str, list[type]] = {
    "": [completion_create_params.CompletionCreateParamsStreaming],
    "messages.*.": [ChatCompletionSystemMessageParam, ChatCompletionDeveloperMessageParam,
                    ChatCompletionUserMessageParam, ChatCompletionAssistantMessageParam,
                    ChatCompletionToolMessageParam],
    "messages.*.content.*.": [ChatCompletionContentPartTextParam],
    "stream_options.": [ChatCompletionStreamOptionsParam],
    "response_format.": [ResponseFormatJSONSchema],
    "response_format.json_schema.": [JSONSchema],
}


@pytest.mark.parametrize("prefix", sorted(SDK_FIELDS))
def test_every_field_of_openais_sdk_is_classified(prefix: str) -> None:
    names = {f"{prefix}{name}" for typed in SDK_FIELDS[prefix] for name in typing.get_type_hints(typed)}
    unclassified = names - HONOURED.keys() - NO_EFFECT.keys() - REFUSED.keys()
    assert not unclassified, f"decide: honour, accept as no effect, or refuse {sorted(unclassified)}"


def test_the_three_lists_do_not_overlap() -> None:
    assert not HONOURED.keys() & NO_EFFECT.keys()
    assert not HONOURED.keys() & REFUSED.keys()
    assert not NO_EFFECT.keys() & REFUSED.keys()


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"logit_bias": {"50256": -100}}, "logit_bias", "unsupported_parameter"),
        ({"top_logprobs": 2}, "top_logprobs", "unsupported_parameter"),
        ({"reasoning_effort": "low"}, "reasoning_effort", "unsupported_parameter"),
        ({"foo": 1}, "foo", "unknown_parameter"),
        ({"foo": None}, "foo", "unknown_parameter"),  # null is absent only for fields OpenAI defines
        ({"top_k": 5}, "top_k", "unknown_parameter"),  # vLLM's, not OpenAI's
        ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages.0.name", "unsupported_parameter"),
        ({"messages": [{"role": "user", "content": "x", "mood": "happy"}]}, "messages.0.mood", "unknown_parameter"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages.0.content.0.image_url", "unsupported_parameter"),
        ({"stream_options": {"include_usage": True, "chunk_size": 3}}, "stream_options.chunk_size",
         "unknown_parameter"),
        ({"response_format": {"type": "json_object", "strict": True}}, "response_format.strict", "unknown_parameter"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {}, "description": "d"}}},
         "response_format.json_schema.description", "unsupported_parameter"),
        ({"service_tier": "flex"}, "service_tier", "unsupported_value"),
        ({"modalities": ["text", "audio"]}, "modalities", "unsupported_value"),
        ({"tool_choice": "required"}, "tool_choice", "unsupported_value"),
    ],
)
def test_a_field_that_would_not_be_honoured_is_a_400_naming_it(fields: dict[str, Any], param: str, code: str) -> None:
    err = _refusal(_chat(**fields))
    assert (err.status, err.param, err.code) == (400, param, code)
    assert err.message.startswith(param)
    assert "not supported" in err.message or "not a field" in err.message
    assert "remove it" in err.message or "remove the" in err.message or "change it" in err.message


@pytest.mark.parametrize(
    "fields",
    [
        {"user": "u1", "safety_identifier": "h", "metadata": {"k": "v"}, "store": True, "prompt_cache_key": "k",
         "prompt_cache_retention": "24h", "prompt_cache_options": {"mode": "implicit"}, "parallel_tool_calls": False,
         "prediction": {"type": "content", "content": "x"}},
        {"service_tier": "auto", "modalities": ["text"], "tool_choice": "none"},
        {"stream": True, "stream_options": {"include_usage": True, "include_obfuscation": False}},
        {"logit_bias": None, "top_logprobs": None, "audio": None, "functions": None},  # null: as if absent
        {"messages": [{"role": "user", "name": None,
                       "content": [{"type": "text", "text": "a", "prompt_cache_breakpoint": {"mode": "explicit"}}]}]},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {}, "strict": True}}},
        {"n": 1, "tools": [], "logprobs": False},
    ],
)
def test_fields_that_change_nothing_are_accepted(fields: dict[str, Any]) -> None:
    assert isinstance(parse_chat_request(_chat(**fields)), ChatRequest)


def test_fields_refused_when_set_keep_their_own_errors() -> None:
    assert _refusal(_chat(n=2)).param == "n"
    assert "tool calls are not supported" in _refusal(_chat(tools=[{"type": "function"}])).message
    assert "logprobs are not supported" in _refusal(_chat(logprobs=True)).message


def test_the_wire_model_itself_still_ignores_unknown_fields() -> None:
    assert ChatRequest.model_validate(_chat(foo=1, logit_bias={"1": 2})).model == "m"


def test_the_published_schema_is_closed_and_lists_the_fields_that_change_nothing() -> None:
    schema = published_schema(ChatRequest.model_json_schema())
    defs = schema["$defs"]
    for node in (schema, *(defs[name] for name in ("ChatMessage", "StreamOptions", "ResponseFormat",
                                                  "JsonSchemaFormat"))):
        assert node["additionalProperties"] is False
    assert {"metadata", "store", "service_tier", "user"} <= schema["properties"].keys()
    assert schema["properties"]["service_tier"]["enum"] == ["auto", "default"]
    assert "logit_bias" not in schema["properties"]
    assert "strict" in defs["JsonSchemaFormat"]["properties"]
    assert "include_obfuscation" in defs["StreamOptions"]["properties"]
    assert defs["ChatMessage"]["properties"]["name"]["type"] == "null"
    # The contract's own schema stays open: the bus tolerates fields it does not know.
    assert "additionalProperties" not in ChatRequest.model_json_schema()


def test_the_readme_lists_every_top_level_field_honoured_or_accepted() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Request fields"):]
    section = section[:section.index("\n##", 1)]
    top_level = {p for p in (*HONOURED, *NO_EFFECT) if "." not in p}
    missing = {f for f in top_level if not re.search(rf"`{f}`", section)}
    assert not missing, f"README's Request fields section does not name {sorted(missing)}"
