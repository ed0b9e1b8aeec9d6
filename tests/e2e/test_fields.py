"""Request fields on the real system: ``response_format`` really constrains vLLM's answer (over
HTTP and through the OpenAI SDK, streaming too), and a field skinflint would not honour is a 400
naming it."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest
from openai import BadRequestError, OpenAI
from pydantic import BaseModel

from tests.e2e.conftest import LiveSystem

pytestmark = pytest.mark.e2e
KEY = "sk-skinflint-demo"
MODEL = "smollm2-135m"
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
        "additionalProperties": False}
ASK_JSON: Any = [{"role": "user", "content": 'Reply with a JSON object whose key "city" holds the capital of France.'}]
ASK_CITY: Any = [{"role": "user", "content": "Name the capital city of France, as JSON."}]
QUESTION: Any = [{"role": "user", "content": "Name the capital city of France."}]


def sdk(live: LiveSystem) -> OpenAI:
    return OpenAI(base_url=f"{live.base_url}/v1", api_key=KEY, max_retries=0, timeout=120)


def post(live: LiveSystem, **fields: Any) -> httpx.Response:
    return httpx.post(f"{live.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": MODEL, "temperature": 0, **fields}, timeout=120)


def city_format(schema: dict[str, Any]) -> Any:
    return {"type": "json_schema", "json_schema": {"name": "capital", "schema": schema, "strict": True}}


def test_json_object_gives_a_json_object(live: LiveSystem) -> None:
    r = post(live, messages=ASK_JSON, max_tokens=64, response_format={"type": "json_object"})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert isinstance(json.loads(choice["message"]["content"]), dict)


def test_the_constraint_turns_prose_into_json(live: LiveSystem) -> None:
    # The same greedy question, not asking for JSON: prose without the constraint, JSON with it.
    plain = post(live, messages=QUESTION, max_tokens=32)
    constrained = post(live, messages=QUESTION, max_tokens=32, response_format=city_format(CITY))
    assert plain.status_code == constrained.status_code == 200, (plain.text, constrained.text)
    with pytest.raises(json.JSONDecodeError):
        json.loads(plain.json()["choices"][0]["message"]["content"])
    jsonschema.validate(json.loads(constrained.json()["choices"][0]["message"]["content"]), CITY)


def test_json_schema_gives_json_valid_against_the_schema(live: LiveSystem) -> None:
    r = post(live, messages=ASK_CITY, max_tokens=64, response_format=city_format(CITY))
    assert r.status_code == 200, r.text
    answer = json.loads(r.json()["choices"][0]["message"]["content"])
    jsonschema.validate(answer, CITY)
    assert answer["city"] == "Paris"  # the README's example says so


def test_the_openai_sdk_gets_schema_valid_json_plain_and_streamed(live: LiveSystem) -> None:
    client = sdk(live)
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK_CITY, max_tokens=64, temperature=0,
        response_format=city_format(CITY))
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), CITY)
    stream = client.chat.completions.create(
        model=MODEL, messages=ASK_JSON, max_tokens=64, temperature=0, stream=True,
        response_format={"type": "json_object"})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert isinstance(json.loads(text), dict)


class Capital(BaseModel):
    city: str
    country: str


def test_the_sdks_parse_with_a_pydantic_model(live: LiveSystem) -> None:
    # parse() sends the SDK's strict schema of the model ($defs, titles, every field required).
    completion = sdk(live).chat.completions.parse(
        model=MODEL, messages=ASK_CITY, max_tokens=64, temperature=0,
        response_format=Capital)
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Capital)


def test_an_answer_cut_short_by_max_tokens_is_incomplete_json_as_with_openai(live: LiveSystem) -> None:
    r = post(live, messages=ASK_JSON, max_tokens=3, response_format={"type": "json_object"})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(choice["message"]["content"])


def test_a_schema_the_grammar_engine_cannot_enforce_is_a_400_naming_it(live: LiveSystem) -> None:
    with pytest.raises(BadRequestError) as info:
        sdk(live).chat.completions.create(
            model=MODEL, messages=ASK_CITY, max_tokens=16,
            response_format=city_format({"type": "object", "not": {"required": ["city"]}}))
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == "response_format.json_schema.schema"
    assert "cannot enforce" in error["message"] and '"not"' in error["message"]
    # The worker is still answering.
    assert post(live, messages=ASK_CITY, max_tokens=4).status_code == 200


def test_an_invalid_schema_is_a_400_from_ingress(live: LiveSystem) -> None:
    r = post(live, messages=ASK_CITY, max_tokens=16,
             response_format=city_format({"type": "object", "properties": {"city": {"type": "text"}}}))
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "response_format.json_schema.schema" and "properties.city.type" in error["message"]


@pytest.mark.parametrize(("extra", "param"), [({"logit_bias": {"1": 5}}, "logit_bias"), ({"foo": 1}, "foo")])
def test_a_field_skinflint_would_not_honour_is_a_400_naming_it(live: LiveSystem, extra: dict[str, Any],
                                                                param: str) -> None:
    with pytest.raises(BadRequestError) as info:
        sdk(live).chat.completions.create(model=MODEL, messages=ASK_CITY, max_tokens=4,
                                          extra_body=extra)
    assert info.value.status_code == 400
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == param and "not" in error["message"]
