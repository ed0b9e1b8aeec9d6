"""A failure anywhere on the worker's side answers the client at once, naming the request id,
and exactly one usage event records it (a renderer that raises, an engine that raises)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from contracts.v1 import ChatMessage
from tests.integration.conftest import chat, running_ingress, running_worker
from tests.integration.test_usage_durability import stored_usage
from tests.support.fakes import FakeEngine
from tests.support.natsd import NatsServer

pytestmark = pytest.mark.integration


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
