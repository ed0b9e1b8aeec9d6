"""Ingress with a scripted worker on a real nats-server: HTTP statuses and formats.

The request path's hand-offs and replies run on raw nats-py (``services.shared.lane``), which
FastStream's in-memory broker cannot carry, so the bus here is a real server; the worker is
scripted.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from faststream.nats import NatsBroker

from contracts.subjects import INFER_STAGE, Priority, infer_subject
from contracts.v1 import Chunk, ErrorReply, Final, HopAck, TaskEnvelope, TokenUsage
from services.ingress.dispatch import Dispatcher
from services.ingress.gateway import Gateway
from services.ingress.http import create_http_app
from services.ingress.settings import IngressSettings
from services.ingress.tenants import Gate, TenantsFile
from services.shared.broker import make_broker
from services.shared.settings import load_config_file
from services.shared.tiers import load_tiers
from tests.support.natsd import NatsServer

pytestmark = pytest.mark.component
ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": "Bearer sk-skinflint-demo"}
#: A tier of these tests' own, so no other test's worker answers them.
TIER = "component-ingress"


def body(**fields: object) -> dict[str, object]:
    return {"model": "smollm2-135m", "messages": [{"role": "user", "content": "hello"}], **fields}


TENANTS = """
tenants:
  - name: demo
    keys: [{id: demo, key: sk-skinflint-demo}]
  - name: tiny
    keys: [{id: tiny, key: sk-tiny-tenant}]
    requests_per_minute: 60
    burst: 2
"""


def scripted_worker(nats_url: str) -> NatsBroker:
    """A worker that answers "hi there", or fails when the prompt says "error"."""
    broker = NatsBroker(nats_url)

    @broker.subscriber(infer_subject(TIER, Priority.INTERACTIVE))
    async def worker(env: TaskEnvelope) -> HopAck:
        text = env.request.messages[-1].content
        if "error" in text:
            await broker.publish(ErrorReply(request_id=env.request_id, status=400, code="bad", message="no",
                                            param="messages"), env.reply_subject)
        else:
            if env.request.stream:
                for i, word in enumerate(["hi", " there"]):
                    await broker.publish(Chunk(request_id=env.request_id, seq=i, delta=word), env.reply_subject)
            await broker.publish(Final(
                request_id=env.request_id, text="hi there", finish_reason="stop",
                usage=TokenUsage(prompt_tokens=5, completion_tokens=2), model="smollm2-135m", tier=TIER,
                served_by="w1", engine_seconds=0.01), env.reply_subject)
        return HopAck(accepted=True, stage=INFER_STAGE, instance="w1")

    return broker


@pytest.fixture
async def client(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[httpx.AsyncClient]:
    (tmp_path / "tenants.yaml").write_text(TENANTS)
    (tmp_path / "tiers.yaml").write_text(f"tiers: {{{TIER}: {{kind: vllm, model: smollm2-135m}}}}\n"
                                         f"models: {{smollm2-135m: {{tier: {TIER}}}}}\n")
    settings = IngressSettings(nats_url=nats_server.url, tenants_file=str(tmp_path / "tenants.yaml"),
                               instance_id=f"ing-{uuid.uuid4().hex[:8]}", max_body_bytes=4096,
                               tiers_file=str(tmp_path / "tiers.yaml"))
    broker = make_broker("ingress", settings, None)
    dispatcher = Dispatcher(broker, settings.instance_id, hop_timeout_s=1, liveness_s=5)
    gateway = Gateway(settings, Gate(load_config_file(settings.tenants_file, TenantsFile)), dispatcher,
                      load_tiers(settings.tiers_file))
    app = create_http_app(gateway)
    worker = scripted_worker(nats_server.url)
    await broker.start()
    await dispatcher.connect()
    await worker.start()
    # A round trip on the worker's connection: the server has registered its subscription before
    # the first request arrives from ingress's connection (else "no responders", now and then).
    await worker.connection.flush()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as c:
            yield c
    finally:
        await worker.stop()
        await broker.stop()


async def test_plain_completion_in_openai_shape(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json=body(), headers=AUTH)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "hi there"}
    assert data["usage"]["total_tokens"] == 7
    assert r.headers["x-request-id"] and data["id"] == f"chatcmpl-{r.headers['x-request-id']}"
    assert float(r.headers["x-skinflint-overhead-ms"]) >= 0


async def test_streaming_is_sse_with_usage_and_done(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", headers=AUTH,
                          json=body(stream=True, stream_options={"include_usage": True}))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "hi there"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    ("payload", "headers", "status", "param"),
    [
        (b"{not json", AUTH, 400, None),
        (json.dumps(body(messages=[])).encode(), AUTH, 400, "messages"),
        (json.dumps(body(max_tokens="many")).encode(), AUTH, 400, "max_tokens"),
        (json.dumps(body(messages=[{"role": "user"}, {"role": "x", "content": "y"}])).encode(), AUTH, 400,
         "messages.1.role"),
        (json.dumps(body(model="gpt-17")).encode(), AUTH, 404, "model"),
        (json.dumps(body()).encode(), {}, 401, None),
        (json.dumps(body()).encode(), {"Authorization": "Bearer nope-nope-nope"}, 401, None),
        (json.dumps(body(messages=[{"role": "user", "content": "x" * 5000}])).encode(), AUTH, 413, None),
        (json.dumps(body(messages=[{"role": "user", "content": "please error"}])).encode(), AUTH, 400,
         "messages"),
    ],
)
async def test_bad_input_gets_its_status_and_a_clear_message(
    client: httpx.AsyncClient, payload: bytes, headers: dict[str, str], status: int, param: str | None
) -> None:
    r = await client.post("/v1/chat/completions", content=payload,
                          headers={**headers, "content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"] and error["code"]
    assert error["param"] == param
    assert r.headers["x-request-id"]
    # The service keeps serving others.
    ok = await client.post("/v1/chat/completions", json=body(), headers=AUTH)
    assert ok.status_code == 200


async def test_models_and_unknown_routes(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models", headers=AUTH)
    assert [m["id"] for m in r.json()["data"]] == ["smollm2-135m"]
    assert (await client.get("/v1/models/none", headers=AUTH)).status_code == 404
    missing = await client.get("/v1/nowhere")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_openapi_spec_is_published(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    op = spec["paths"]["/v1/chat/completions"]["post"]
    assert "requestBody" in op and {"400", "401", "404", "413", "429", "503", "504"} <= set(op["responses"])


async def test_over_the_rate_limit_is_a_429_for_that_tenant_only(client: httpx.AsyncClient) -> None:
    tiny = {"Authorization": "Bearer sk-tiny-tenant"}
    statuses = [(await client.post("/v1/chat/completions", json=body(), headers=tiny)).status_code
                for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = await client.post("/v1/chat/completions", json=body(), headers=tiny)
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert int(limited.headers["retry-after"]) >= 1
    # Another tenant is not affected.
    assert (await client.post("/v1/chat/completions", json=body(), headers=AUTH)).status_code == 200
