"""Request fields over a real nats-server: ingress refuses what it would not honour (HTTP and
WebSocket), and ``response_format`` reaches the engine's parameters through the envelope. The
worker runs the fake engine; the real one is in ``tests/e2e/test_fields.py``. The last tests map
our parameters onto vLLM's own types (vLLM imported, no engine started)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import websockets

from services.worker.engine import STRUCTURED_OUTPUTS, GenerationParams, refusal, structured_outputs
from tests.integration.conftest import AUTH, chat, running_ingress, running_worker
from tests.support.fakes import FakeEngine
from tests.support.natsd import NatsServer

pytestmark = pytest.mark.integration
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
        "additionalProperties": False}


def json_schema(schema: object) -> dict[str, object]:
    return {"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}}


async def test_the_worker_hands_the_response_format_to_the_engine(nats_server: NatsServer) -> None:
    async with running_worker(nats_server.url) as worker, running_ingress(nats_server.url) as (_, client):
        engine = worker.engine
        assert isinstance(engine, FakeEngine)
        r = await client.post("/v1/chat/completions", json=chat(max_tokens=2, response_format=json_schema(CITY)))
        assert r.status_code == 200, r.text
        assert (engine.params[-1].json_schema, engine.params[-1].json_object) == (CITY, False)
        r = await client.post("/v1/chat/completions", json=chat(max_tokens=2, response_format={"type": "json_object"}))
        assert r.status_code == 200, r.text
        assert (engine.params[-1].json_schema, engine.params[-1].json_object) == (None, True)


async def test_a_schema_the_engine_refuses_is_a_400_from_the_worker(nats_server: NatsServer) -> None:
    async with running_worker(nats_server.url), running_ingress(nats_server.url) as (_, client):
        r = await client.post("/v1/chat/completions",
                              json=chat(max_tokens=2, response_format=json_schema({"not": {"type": "string"}})))
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "response_format.json_schema.schema"
        assert "cannot enforce" in error["message"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"logit_bias": {"1": 5}}, "logit_bias"), ({"foo": 1}, "foo"),
     ({"response_format": json_schema({"type": "strin"})}, "response_format.json_schema.schema")],
)
async def test_ingress_refuses_before_any_worker_is_asked(nats_server: NatsServer, fields: dict[str, Any],
                                                          param: str) -> None:
    async with running_worker(nats_server.url) as worker, running_ingress(nats_server.url) as (ingress, client):
        engine = worker.engine
        assert isinstance(engine, FakeEngine)
        r = await client.post("/v1/chat/completions", json=chat(max_tokens=2, **fields))
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
        url = f"ws://127.0.0.1:{ingress.port}/v1/ws"
        async with websockets.connect(url, additional_headers=AUTH) as ws:
            await ws.send(json.dumps({"id": "c1", "request": chat(max_tokens=2, **fields)}))
            frame = json.loads(await ws.recv())
        assert (frame["type"], frame["error"]["param"], frame["error"]["status"]) == ("error", f"request.{param}", 400)
        assert engine.params == []


async def test_the_openapi_document_shows_the_fields_ingress_takes(nats_server: NatsServer) -> None:
    async with running_ingress(nats_server.url) as (_, client):
        spec = (await client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    body = schemas["ChatRequest"]
    assert body["additionalProperties"] is False
    assert {"response_format", "metadata", "store"} <= body["properties"].keys()
    assert "logit_bias" not in body["properties"]
    assert schemas["JsonSchemaFormat"]["required"] == ["name", "schema"]
    assert schemas["ResponseFormat"]["properties"]["type"]["enum"] == ["text", "json_object", "json_schema"]


def test_our_parameters_map_onto_vllms_structured_outputs() -> None:
    from vllm.config import StructuredOutputsConfig
    from vllm.exceptions import VLLMValidationError

    config = StructuredOutputsConfig(**STRUCTURED_OUTPUTS)
    assert (config.backend, config.disable_any_whitespace) == ("guidance", True)
    assert structured_outputs(GenerationParams(max_tokens=1)) is None
    assert structured_outputs(GenerationParams(max_tokens=1, json_object=True)).json_object is True
    as_json = structured_outputs(GenerationParams(max_tokens=1, json_schema=CITY)).json
    assert json.loads(as_json) == CITY
    err = refusal(VLLMValidationError('Grammar error: Unimplemented keys: ["not"]'),
                  GenerationParams(max_tokens=1, json_schema={"not": {}}))
    assert (err.status, err.param) == (400, "response_format.json_schema.schema")
    assert 'Unimplemented keys: ["not"]' in err.message
