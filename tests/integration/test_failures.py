"""A failure anywhere on the worker's side answers the client at once, naming the request id,
and exactly one usage event records it (a renderer that raises, an engine that raises)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import nats
import pytest

from contracts.v1 import ChatMessage, HopAck, TaskEnvelope
from services.shared import lane
from tests.integration.conftest import chat, running_ingress, running_worker
from tests.support.fakes import FakeEngine
from tests.support.natsd import NatsServer
from tests.support.usage_stream import stored_usage

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).resolve().parents[1] / "examples/v1/task_envelope.json"


class BrokenTemplate(FakeEngine):
    """A chat template that fails to render, as a Jinja error in a model's template does."""

    def render(self, messages: Sequence[ChatMessage]) -> list[int]:
        raise ValueError("jinja2.exceptions.TemplateError: Conversation roles must alternate")


@pytest.mark.parametrize(("engine", "stream"), [
    (BrokenTemplate(), False), (BrokenTemplate(), True), (FakeEngine(fail_after=1), False),
    (FakeEngine(fail_after=1), True),
], ids=["renderer", "renderer-stream", "engine", "engine-stream"])
async def test_a_failing_worker_answers_at_once_and_is_recorded_once(
    fresh_nats_server: NatsServer, engine: FakeEngine, stream: bool
) -> None:
    async with running_worker(fresh_nats_server.url, engine=engine), \
            running_ingress(fresh_nats_server.url, request_timeout_s=60) as (_, client):
        started = time.monotonic()
        r = await client.post("/v1/chat/completions", json=chat(max_tokens=5, stream=stream))
        took = time.monotonic() - started
        request_id = r.headers["x-request-id"]
        if stream and r.status_code == 200:
            # The failure came after the first token: reported inside the stream, as OpenAI does.
            assert '"error"' in r.text and request_id in r.text and r.text.endswith("data: [DONE]\n\n")
        else:
            assert r.status_code == 500, r.text
            assert request_id in r.json()["error"]["message"]
    assert took < 10, f"the client waited {took:.1f} s (the request timeout is 60 s)"
    stored = await stored_usage(fresh_nats_server.url)
    assert stored == {request_id: 1}


async def test_a_stage_whose_hand_off_handler_raises_refuses_at_once(nats_server: NatsServer) -> None:
    """The sender hears at once (it would otherwise wait out its hop timeout, then answer 504)."""

    async def broken(env: TaskEnvelope) -> HopAck:
        raise RuntimeError("capacity bookkeeping broke")

    def refuse(reason: str) -> HopAck:
        return HopAck(accepted=False, stage="probe", instance="t", reason=reason)

    nc = await nats.connect(nats_server.url)
    try:
        sub = await lane.serve_hops(nc, "sf.test.broken-hop", "q", broken, refuse)
        env = TaskEnvelope.model_validate_json(EXAMPLE.read_text())
        started = time.monotonic()
        ack = await lane.request_hop(nc, "sf.test.broken-hop", env, timeout_s=5)
        await sub.unsubscribe()
    finally:
        await nc.close()
    assert time.monotonic() - started < 2
    assert not ack.accepted and ack.reason is not None and env.request_id in ack.reason
