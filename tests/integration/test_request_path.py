"""The request path over a real nats-server: ingress, stages, a worker (fake engine)."""

from __future__ import annotations

import json

import pytest
import websockets

from contracts.v1 import Final, TaskEnvelope, TokenUsage
from services.shared.slip import insert_next, skip
from services.shared.stage import Finish, Forward, StageRunner
from tests.integration.conftest import AUTH, chat, running_ingress, running_worker
from tests.support.natsd import NatsServer
from tests.support.usage_stream import stored_usage

pytestmark = pytest.mark.integration


async def test_plain_and_streaming_answers(nats_server: NatsServer) -> None:
    async with running_worker(nats_server.url), running_ingress(nats_server.url) as (_, client):
        r = await client.post("/v1/chat/completions", json=chat(max_tokens=4))
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "Paris is the capital"
        async with client.stream("POST", "/v1/chat/completions", json=chat(max_tokens=3, stream=True)) as s:
            lines = [line async for line in s.aiter_lines() if line.startswith("data: ")]
        deltas = [json.loads(x[6:])["choices"][0]["delta"].get("content", "") for x in lines[:-1]]
        assert "".join(deltas) == "Paris is the" and lines[-1] == "data: [DONE]"


async def test_no_worker_for_the_tier_is_a_503(nats_server: NatsServer) -> None:
    async with running_ingress(nats_server.url) as (_, client):
        r = await client.post("/v1/chat/completions", json=chat(model="ghost"))
        assert r.status_code == 503
        assert "no 'infer' service is running" in r.json()["error"]["message"]


async def test_routing_slip_inserts_skips_and_finishes_stages(nats_server: NatsServer) -> None:
    visits: dict[str, list[str]] = {}

    def recorder(name: str):  # type: ignore[no-untyped-def]
        async def logic(env: TaskEnvelope) -> Forward | Finish:
            visits.setdefault(env.request_id, []).append(name)
            text = env.request.messages[-1].content
            if name == "probe" and text == "insert":
                return Forward(insert_next(env, "probe3"))
            if name == "probe" and text == "skip":
                return Forward(skip(env, "probe2"))
            if name == "probe" and text == "finish":
                return Finish(Final(request_id=env.request_id, text="answered by probe", finish_reason="stop",
                                    usage=TokenUsage(prompt_tokens=0, completion_tokens=0),
                                    model=env.route.model, tier="none", served_by="probe"))
            env.enrichments[name] = {"seen": True}
            return Forward(env)
        return logic

    async with running_worker(nats_server.url) as worker, \
            running_ingress(nats_server.url, pipeline=["probe", "probe2", "infer"]) as (ingress, client):
        runners = [StageRunner(ingress.broker, n, "test", recorder(n)) for n in ("probe", "probe2", "probe3")]
        for runner in runners:
            await runner.start()
        try:
            engine = worker.engine
            assert engine is not None
            results = {}
            for text in ("plain", "insert", "skip", "finish"):
                before = len(engine.priorities)  # type: ignore[attr-defined]
                r = await client.post("/v1/chat/completions", json=chat(text, max_tokens=2))
                assert r.status_code == 200, r.text
                served = len(engine.priorities) > before  # type: ignore[attr-defined]
                results[text] = (visits[r.headers["x-request-id"]], served,
                                 r.json()["choices"][0]["message"]["content"])
        finally:
            for runner in runners:
                await runner.drain()
    assert results["plain"] == (["probe", "probe2"], True, "Paris is")
    assert results["insert"] == (["probe", "probe3", "probe2"], True, "Paris is")
    assert results["skip"] == (["probe"], True, "Paris is")
    assert results["finish"] == (["probe"], False, "answered by probe")


async def test_a_stage_left_with_nowhere_to_go_answers_an_error(nats_server: NatsServer) -> None:
    async def drop_infer(env: TaskEnvelope) -> Forward:
        return Forward(skip(env, "infer"))

    async with running_ingress(nats_server.url, pipeline=["lonely", "infer"]) as (ingress, client):
        runner = StageRunner(ingress.broker, "lonely", "test", drop_infer)
        await runner.start()
        r = await client.post("/v1/chat/completions", json=chat())
        await runner.drain()
    assert r.status_code == 500
    assert "nowhere left to go" in r.json()["error"]["message"]


async def test_a_plain_answer_says_where_skinflints_own_time_went(nats_server: NatsServer) -> None:
    async with running_worker(nats_server.url), running_ingress(nats_server.url) as (_, client):
        r = await client.post("/v1/chat/completions", json=chat(max_tokens=4))
    assert r.status_code == 200, r.text
    phases = dict(part.split("=") for part in r.headers["x-skinflint-phases-ms"].split(","))
    assert list(phases) == ["ingress_in", "to_worker", "worker_in", "worker_out", "to_ingress", "ingress_out"]
    spent = {name: float(ms) for name, ms in phases.items()}
    assert all(ms >= 0 for ms in spent.values()), spent
    # The phases are what the overhead header sums up (one host: the clocks agree); the only gaps
    # are the moments between reading a clock and the next mark.
    assert sum(spent.values()) == pytest.approx(float(r.headers["x-skinflint-overhead-ms"]), abs=1.0)


async def test_a_whole_answer_from_a_stage_streams_as_content_over_sse_and_websocket(
    nats_server: NatsServer,
) -> None:
    """A stage that finishes a streaming request with a whole ``Final`` (as a cache hit will):
    its text reaches the client as stream content, once, with the usage."""

    async def answer_whole(env: TaskEnvelope) -> Finish:
        return Finish(Final(request_id=env.request_id, text="answered whole", finish_reason="stop",
                            usage=TokenUsage(prompt_tokens=3, completion_tokens=2), model=env.route.model,
                            tier="small", served_by="probe"))

    async with running_ingress(nats_server.url, pipeline=["probe", "infer"]) as (ingress, client):
        runner = StageRunner(ingress.broker, "probe", "test", answer_whole)
        await runner.start()
        try:
            async with client.stream("POST", "/v1/chat/completions", json=chat(
                    stream=True, stream_options={"include_usage": True})) as s:
                events = [line[6:] async for line in s.aiter_lines() if line.startswith("data: ")]
                sse_request = s.headers["x-request-id"]
            async with websockets.connect(f"ws://127.0.0.1:{ingress.port}/v1/ws",
                                          additional_headers=AUTH) as ws:
                await ws.send(json.dumps({"id": "w1", "request": chat()}))
                frames = [json.loads(await ws.recv()) for _ in range(2)]
        finally:
            await runner.drain()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "answered whole"
    assert chunks[-1]["usage"]["completion_tokens"] == 2
    assert [f["type"] for f in frames] == ["chunk", "done"]
    assert frames[0]["delta"] == "answered whole"
    assert frames[1]["response"]["choices"][0]["message"]["content"] == "answered whole"
    # The stage ended both tasks: one usage event each, charging no tokens (no engine ran).
    stored = await stored_usage(nats_server.url)
    assert [stored.get(rid) for rid in (sse_request, frames[1]["request_id"])] == [1, 1]
