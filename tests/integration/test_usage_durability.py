"""A delivered answer is never left uncharged: its usage event reaches the server before it."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import httpx
import pytest

from services.stack import Stack
from tests.integration.conftest import chat, running_ingress
from tests.integration.test_resilience import start_fake_worker, wait_for_worker
from tests.support.natsd import NatsServer
from tests.support.usage_stream import stored_usage

pytestmark = pytest.mark.integration


async def test_a_worker_killed_right_after_its_reply_has_still_sent_the_charge(
    fresh_nats_server: NatsServer, stack_factory: Callable[[], Stack]
) -> None:
    stack = stack_factory()
    answered: list[str] = []
    async with running_ingress(fresh_nats_server.url, worker_liveness_s=1.5) as (_, client):
        for _ in range(3):
            start_fake_worker(stack, fresh_nats_server.url, seconds_per_token=0.0)
            await wait_for_worker(client)
            r = await client.post("/v1/chat/completions", json=chat(max_tokens=3))
            assert r.status_code == 200, r.text
            # The client has its answer: kill the worker at once, before anything else it holds
            # (an outbox, a timer) could go out.
            stack.stop_one("worker", signal.SIGKILL)
            answered.append(r.headers["x-request-id"])
            await wait_for_no_worker(client)
    stored = await stored_usage(fresh_nats_server.url)
    assert {rid: stored.get(rid, 0) for rid in answered} == dict.fromkeys(answered, 1)


async def wait_for_no_worker(client: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (await client.get("/readyz")).status_code == 503:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("ingress still sees the killed worker")
