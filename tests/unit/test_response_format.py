"""``response_format``: validated at ingress, carried in the envelope, planned into the engine's
parameters, and a schema the engine refuses answered as a 400 naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contracts.v1 import ErrorReply, Final, TaskEnvelope
from services.ingress.gateway import parse_chat_request
from services.shared.errors import BadRequest
from services.worker.backend import EngineBackend, WorkerIdentity, plan
from services.worker.generation import answer
from tests.support.fakes import FakeEngine, ListSink

pytestmark = pytest.mark.unit
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "v1"
WHO = WorkerIdentity("w1", "small", "smollm2-135m", default_max_tokens=64)
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
        "additionalProperties": False}


def _chat(response_format: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "response_format": response_format}


def _schema(schema: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "city", "schema": schema, **extra}}


def _refusal(body: dict[str, Any]) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse_chat_request(body)
    return info.value


def envelope(response_format: Any) -> TaskEnvelope:
    raw = json.loads((EXAMPLES / "task_envelope.json").read_text())
    raw["request"]["response_format"] = response_format
    return TaskEnvelope.model_validate(raw)


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "object", "properties": {"city": {"type": "strin"}}}, "(at properties.city.type)"),
        ({"type": "object", "required": "city"}, "'city' is not of type 'array'"),
        # Draft 2020-12 unless $schema says otherwise: an array of item schemas is draft 7's.
        ({"type": "array", "items": [{"type": "string"}]}, "(at items)"),
        ({"$schema": "https://example.com/my-draft", "type": "object"}, "is not a JSON Schema draft"),
        ({"type": "string", "pattern": "(("}, "(at pattern)"),
    ],
)
def test_an_invalid_schema_is_a_400_naming_the_schema_and_the_reason(schema: dict[str, Any], reason: str) -> None:
    err = _refusal(_chat(_schema(schema)))
    assert err.param == "response_format.json_schema.schema"
    assert err.message.startswith("response_format.json_schema.schema: ")
    assert reason in err.message


def test_the_draft_named_by_dollar_schema_is_the_one_checked() -> None:
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "array", "items": [{"type": "string"}]}
    assert parse_chat_request(_chat(_schema(draft7))).response_format is not None


@pytest.mark.parametrize(
    ("response_format", "param", "says"),
    [
        ({"type": "json_schema"}, "response_format", "needs a json_schema object"),
        ({"type": "json_object", "json_schema": {"name": "a", "schema": {}}}, "response_format",
         "only read with type 'json_schema'"),
        ({"type": "xml"}, "response_format.type", "'text', 'json_object' or 'json_schema'"),
        (_schema(CITY) | {"json_schema": {"name": "no spaces please", "schema": CITY}},
         "response_format.json_schema.name", "pattern"),
        ({"type": "json_schema", "json_schema": {"name": "city"}}, "response_format.json_schema.schema", "required"),
    ],
)
def test_a_malformed_response_format_names_the_field(response_format: Any, param: str, says: str) -> None:
    err = _refusal(_chat(response_format))
    assert err.param == param and says in err.message


def test_the_schema_travels_in_the_envelope_under_its_openai_name() -> None:
    req = parse_chat_request(_chat(_schema(CITY, strict=True)))
    env = envelope(req.response_format.model_dump() if req.response_format else None)
    wire = json.loads(env.model_dump_json())
    assert wire["request"]["response_format"]["json_schema"] == {"name": "city", "schema": CITY}
    assert TaskEnvelope.model_validate(wire) == env


@pytest.mark.parametrize(
    ("response_format", "json_object", "json_schema"),
    [(None, False, None), ({"type": "text"}, False, None), ({"type": "json_object"}, True, None),
     (_schema(CITY), False, CITY)],
)
def test_plan_carries_the_constraint_into_the_engine_parameters(
    response_format: Any, json_object: bool, json_schema: dict[str, Any] | None
) -> None:
    _, params = plan(envelope(response_format), FakeEngine(), WHO)
    assert (params.json_object, params.json_schema) == (json_object, json_schema)


async def test_the_engine_gets_the_schema_and_answers() -> None:
    engine, sink = FakeEngine(), ListSink()
    result = await answer(envelope(_schema(CITY)), EngineBackend(engine), sink, WHO)
    assert isinstance(result, Final)
    assert engine.params[-1].json_schema == CITY


async def test_a_schema_the_engine_cannot_enforce_is_a_400_naming_it_not_a_crash() -> None:
    sink = ListSink()
    result = await answer(envelope(_schema({"not": {"type": "string"}})), EngineBackend(FakeEngine()), sink, WHO)
    assert isinstance(result, ErrorReply)
    assert (result.status, result.param) == (400, "response_format.json_schema.schema")
    assert "cannot enforce" in result.message and "Unimplemented keys" in result.message
    assert [u.status for u in sink.usages] == ["error"]
