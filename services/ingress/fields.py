"""Which chat request fields skinflint honours, which it accepts knowing they change nothing, and
the refusal of every other one with a 400 that names it: a client can always tell a field that was
honoured from one that was thrown away.

The wire model (``ChatRequest``) ignores fields it does not know, as every bus message must for
forward compatibility; this strictness is ingress's, for what clients send. Fields are named by
path, ``*`` standing for every item of a list. OpenAI's own list of fields is the one in its
Python SDK (``openai/types/chat/completion_create_params.py``); a unit test checks that every field
there is classified here, so a field OpenAI adds is refused until someone decides.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from services.shared.errors import BadRequest

#: Fields skinflint acts on, with what it does with them.
HONOURED: dict[str, str] = {
    "model": "the model that answers (GET /v1/models)",
    "messages": "the conversation",
    "messages.*.role": "system, developer, user, assistant or tool",
    "messages.*.content": "text, or a list of text parts (joined)",
    "messages.*.content.*.type": "only `text` parts",
    "messages.*.content.*.text": "the part's text",
    "max_tokens": "most tokens to generate",
    "max_completion_tokens": "most tokens to generate",
    "temperature": "sampling temperature",
    "top_p": "nucleus sampling",
    "stop": "up to 4 stop sequences",
    "seed": "sampling seed",
    "presence_penalty": "presence penalty",
    "frequency_penalty": "frequency penalty",
    "stream": "server-sent events",
    "stream_options": "streaming options",
    "stream_options.include_usage": "a last chunk with the usage",
    "response_format": "text, a JSON object, or JSON valid against a schema",
    "response_format.type": "`text`, `json_object` or `json_schema`",
    "response_format.json_schema": "the schema the answer must satisfy",
    "response_format.json_schema.name": "the format's name",
    "response_format.json_schema.schema": "a JSON Schema, enforced while generating",
    # Honoured at their neutral value; ChatRequest refuses any other with its own message.
    "n": "only 1",
    "tools": "only none or an empty list",
    "logprobs": "only false",
}


@dataclass(frozen=True)
class NoEffect:
    """A field accepted and ignored because it does not change the answer (``why``); with
    ``only``, just these values are (the others would, and are refused)."""

    why: str
    only: tuple[Any, ...] | None = None


_CACHE_HINT = NoEffect("a hint for OpenAI's prompt cache; skinflint's engine caches prompt prefixes by itself")
_IDENTITY = NoEffect("an end-user id OpenAI uses against abuse")

#: Fields OpenAI documents as not changing the answer: accepted, and ignored.
NO_EFFECT: dict[str, NoEffect] = {
    "user": _IDENTITY,
    "safety_identifier": _IDENTITY,
    "metadata": NoEffect("tags OpenAI stores with the completion"),
    "store": NoEffect("whether OpenAI keeps the completion for its evals and distillation"),
    "prompt_cache_key": _CACHE_HINT,
    "prompt_cache_retention": _CACHE_HINT,
    "prompt_cache_options": _CACHE_HINT,
    "messages.*.content.*.prompt_cache_breakpoint": _CACHE_HINT,
    "prediction": NoEffect("a latency hint: the answer is the same without it"),
    "parallel_tool_calls": NoEffect("applies to tools only, which skinflint refuses"),
    "tool_choice": NoEffect("without tools the model calls none", only=("none", "auto")),
    "modalities": NoEffect("text is what skinflint answers", only=(["text"],)),
    "service_tier": NoEffect("the standard processing; for cheap, slow work use the bulk subject",
                             only=("auto", "default")),
    "stream_options.include_obfuscation": NoEffect("padding against side channels; skinflint's chunks carry none"),
    "response_format.json_schema.strict": NoEffect("the schema is always enforced, as with true"),
}

_TOOLS = "skinflint has no tool or function calling yet; remove it"
_ONLY_TEXT = "skinflint takes text content parts only; remove the part, or send its text"

#: OpenAI's fields that skinflint cannot honour, with what to do instead.
REFUSED: dict[str, str] = {
    "logit_bias": "skinflint sets no token biases; remove it",
    "top_logprobs": "skinflint returns no log probabilities; remove it",
    "audio": "skinflint answers in text only; remove it",
    "functions": _TOOLS,
    "function_call": _TOOLS,
    "reasoning_effort": "the models served here do not reason; remove it",
    "verbosity": "remove it, and say how long the answer should be in a message or set max_tokens",
    "web_search_options": "skinflint does not search the web; remove it",
    "moderation": "skinflint runs no moderation; remove it",
    "messages.*.name": "the models' chat templates have no author names; remove it, or put the name in the content",
    "messages.*.tool_calls": _TOOLS,
    "messages.*.tool_call_id": _TOOLS,
    "messages.*.function_call": _TOOLS,
    "messages.*.audio": "skinflint takes text only; remove it, and send the transcript as content",
    "messages.*.refusal": "remove it, and send the refusal's text as the message's content",
    "messages.*.content.*.image_url": _ONLY_TEXT,
    "messages.*.content.*.input_audio": _ONLY_TEXT,
    "messages.*.content.*.file": _ONLY_TEXT,
    "response_format.json_schema.description": "skinflint does not show it to the model; remove it, and "
                                               "describe the format in a message",
}

_KNOWN = HONOURED.keys() | NO_EFFECT.keys() | REFUSED.keys()
#: Honoured fields whose own fields are checked too (the others are checked as a whole).
_CONTAINERS = frozenset(p for p in HONOURED if any(k.startswith(p + ".") for k in _KNOWN))


def refuse_unhonoured(body: dict[str, Any]) -> None:
    """Raise a 400 naming the first field of ``body`` that skinflint would not honour: one
    refused, one with a value that would change the answer, or one OpenAI does not define.
    A null counts as absent, as in OpenAI's API. Types and ranges are ``ChatRequest``'s job."""
    _check(body, "", "")


def _check(obj: dict[str, Any], path: str, pattern: str) -> None:
    for key, value in obj.items():
        where, rule = f"{path}{key}", f"{pattern}{key}"
        if rule in HONOURED:
            if rule in _CONTAINERS:
                _descend(value, where, rule)
        elif value is None and rule in _KNOWN:
            continue
        elif rule in NO_EFFECT:
            only = NO_EFFECT[rule].only
            if only is not None and value not in only:
                allowed = " or ".join(repr(v) for v in only)
                raise BadRequest(f"{where}: {value!r} is not supported, only {allowed} ({NO_EFFECT[rule].why}); "
                                 "change it or remove it", param=where, code="unsupported_value")
        elif rule in REFUSED:
            raise BadRequest(f"{where} is not supported: {REFUSED[rule]}", param=where, code="unsupported_parameter")
        else:
            raise BadRequest(f"{where} is not a field of OpenAI's chat completion request, which is all "
                             "skinflint takes; check the spelling or remove it", param=where, code="unknown_parameter")


def _descend(value: Any, path: str, pattern: str) -> None:
    if isinstance(value, dict):
        _check(value, f"{path}.", f"{pattern}.")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, dict):
                _check(item, f"{path}.{i}.", f"{pattern}.*.")


def published_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``ChatRequest``'s JSON schema (with its ``$defs``) as ingress takes it: every object closed
    (``additionalProperties: false``), the no-effect fields added, described, and the refused
    fields the contract carries limited to null. Returns a new schema."""
    schema = copy.deepcopy(schema)
    defs: dict[str, Any] = schema.get("$defs", {})
    _publish(schema, "", defs)
    return schema


def _publish(node: dict[str, Any], pattern: str, defs: dict[str, Any]) -> None:
    properties: dict[str, Any] = node.setdefault("properties", {})
    node["additionalProperties"] = False
    for key in list(properties):
        rule = f"{pattern}{key}"
        if rule in REFUSED:
            properties[key] = {"type": "null", "description": f"Not supported unless null: {REFUSED[rule]}."}
        elif rule in _CONTAINERS:
            for target, child in _object_schemas(properties[key], defs):
                _publish(target, f"{rule}{child}.", defs)
    for rule, effect in NO_EFFECT.items():
        parent, _, key = rule.rpartition(".")
        if f"{parent}." == pattern or (not parent and not pattern):
            properties.setdefault(key, {
                **({"enum": list(effect.only)} if effect.only is not None else {}),
                "description": f"Accepted, changes nothing: {effect.why}.",
            })


def _object_schemas(prop: dict[str, Any], defs: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """The object schemas a property's value can be (via ``$ref``, ``anyOf``, array ``items``),
    each with the path step to it (``""``, or ``".*"`` for list items)."""
    found: list[tuple[dict[str, Any], str]] = []
    for option in prop.get("anyOf", [prop]):
        ref = option.get("$ref") or option.get("items", {}).get("$ref")
        if ref:
            step = ".*" if option.get("type") == "array" else ""
            found.append((defs[ref.rsplit("/", 1)[-1]], step))
    return found
