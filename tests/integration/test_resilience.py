"""Failures an operator causes: a worker killed mid-request, SIGTERM drains, restarts."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import httpx
import pytest

from services.stack import Stack, free_port
from tests.integration.conftest import AUTH, chat, running_ingress
from tests.support.natsd import NatsServer

pytestmark = pytest.mark.integration


def start_fake_worker(stack: Stack, nats_url: str, seconds_per_token: float = 0.2) -> None:
    stack.env["SF_NATS_URL"] = nats_url
    stack.start_service("worker", "tests.support.fake_worker",
                        {"SF_FAKE_SECONDS_PER_TOKEN": str(seconds_per_token)})


async def wait_for_worker(client: httpx.AsyncClient, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (await client.get("/readyz")).status_code == 200:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("worker did not become ready")


async def worker_goes_idle(client: httpx.AsyncClient, within_s: float, why: str) -> None:
    """The worker's heartbeat shows nothing in flight within ``within_s``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        workers = (await client.get("/readyz")).json()["workers"]
        if workers and workers[0]["inflight"] == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the worker kept generating for {why}")


async def test_killed_worker_gives_a_clear_503_and_a_restarted_one_serves(
    nats_server: NatsServer, stack_factory: Callable[[], Stack]
) -> None:
    stack = stack_factory()
    start_fake_worker(stack, nats_server.url)
    async with running_ingress(nats_server.url, worker_liveness_s=1.5, request_timeout_s=60) as (_, client):
        await wait_for_worker(client)
        pending = asyncio.create_task(client.post("/v1/chat/completions", json=chat(max_tokens=12)))
        await asyncio.sleep(0.8)  # generating now
        stack.stop_one("worker", signal.SIGKILL)
        r = await pending
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "worker_lost"
        # Nobody serves the tier now: an immediate, clear 503.
        assert (await client.post("/v1/chat/completions", json=chat())).status_code == 503
        start_fake_worker(stack, nats_server.url, seconds_per_token=0.0)
        await wait_for_worker(client)
        assert (await client.post("/v1/chat/completions", json=chat(max_tokens=2))).status_code == 200


async def test_sigterm_lets_a_worker_finish_what_it_holds(
    nats_server: NatsServer, stack_factory: Callable[[], Stack]
) -> None:
    stack = stack_factory()
    start_fake_worker(stack, nats_server.url, seconds_per_token=0.15)
    log_path = stack.procs["worker"].log_path
    async with running_ingress(nats_server.url) as (_, client):
        await wait_for_worker(client)
        pending = asyncio.create_task(client.post("/v1/chat/completions", json=chat(max_tokens=10)))
        await asyncio.sleep(0.5)
        code = await asyncio.to_thread(stack.stop_one, "worker", signal.SIGTERM)
        r = await pending
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 10
    assert code == 0
    log = log_path.read_text()
    # Drained because the work was done, not because a timeout ran out.
    assert "worker stopped" in log
    assert "drain timed out" not in log and "DrainTimeoutError" not in log


async def test_sigterm_lets_ingress_finish_in_flight_requests(
    nats_server: NatsServer, stack_factory: Callable[[], Stack]
) -> None:
    stack = stack_factory()
    start_fake_worker(stack, nats_server.url, seconds_per_token=0.15)
    port = stack.start_ingress(free_port())
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=30) as client:
        await wait_for_worker(client)
        pending = asyncio.create_task(client.post("/v1/chat/completions", json=chat(max_tokens=10)))
        await asyncio.sleep(0.5)
        code = await asyncio.to_thread(stack.stop_one, "ingress", signal.SIGTERM)
        r = await pending
    assert r.status_code == 200, r.text
    assert code == 0


async def test_timeout_is_a_504_and_frees_the_worker(
    nats_server: NatsServer, stack_factory: Callable[[], Stack]
) -> None:
    stack = stack_factory()
    start_fake_worker(stack, nats_server.url, seconds_per_token=0.5)
    async with running_ingress(nats_server.url, request_timeout_s=1.0) as (_, client):
        await wait_for_worker(client)
        r = await client.post("/v1/chat/completions", json=chat(max_tokens=12))
        assert r.status_code == 504
        assert "cancelled" in r.json()["error"]["message"]
        # Generating all 12 tokens would take 6 s: the worker was told to stop long before.
        await worker_goes_idle(client, within_s=3, why="a request nobody waits for")


async def test_a_client_that_hangs_up_frees_the_worker(
    nats_server: NatsServer, stack_factory: Callable[[], Stack]
) -> None:
    stack = stack_factory()
    start_fake_worker(stack, nats_server.url, seconds_per_token=0.5)
    async with running_ingress(nats_server.url) as (_, client):
        await wait_for_worker(client)
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/chat/completions", json=chat(max_tokens=12), timeout=1.0)
        # Generating all 12 tokens would take 6 s: the slot must be free well before that.
        await worker_goes_idle(client, within_s=3, why="a client that left")
