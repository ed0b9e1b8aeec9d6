"""The upstream worker against a real ``vllm serve`` (scripts/vllm_serve.py, SmolLM2-135M), on a
real nats-server, driven as ingress drives it: answers plain and streamed, the provider's usage,
a request the provider refuses, a provider too slow, and the circuit breaker opening while the
provider is cut off (a TCP proxy between them) and closing once it is back.

It runs with the other tests that need the real engine (marker ``e2e``: ``make e2e``); one
``vllm serve`` serves the module (~30-40 s to start). Run it alone under the machine's engine
lock: ``flock /tmp/skinflint-engine.lock .venv/bin/pytest tests/integration/test_upstream.py``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.client import Client

from contracts.subjects import USAGE_SUBJECT, Priority, infer_subject
from contracts.v1 import REPLY_ADAPTER, Accepted, Chunk, ErrorReply, Final, HopAck, TaskEnvelope, UsageEvent
from services.stack import free_port
from services.worker.breaker import State
from services.worker.service import WorkerService
from services.worker.settings import WorkerSettings
from services.worker.upstream import UNAVAILABLE, UpstreamBackend
from tests.support.config import pricebook_with
from tests.support.natsd import NatsServer
from tests.support.tcp_proxy import TcpProxy
from tests.support.tier_files import tiers_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import vllm_serve  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
EXAMPLE = ROOT / "tests/examples/v1/task_envelope.json"
TIERS = ("up-plain", "up-slow", "up-cut")
PRICEBOOK = pricebook_with(*TIERS)
PROMPT = "What is the capital of France? Answer in one sentence."


@pytest.fixture(scope="module")
def vllm_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if not (vllm_serve.MODEL_DIR / ".complete").exists():
        pytest.fail(f"{vllm_serve.MODEL_DIR} is missing: run `make install` (converts the model once)")
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "vllm-serve.log"
    proc = vllm_serve.start(port, log_path=log)
    try:
        vllm_serve.wait_ready(port, proc, timeout_s=500)
        yield port
    finally:
        vllm_serve.stop(proc)


@dataclass
class Worker:
    service: WorkerService
    nc: Client
    tier: str
    replies: dict[str, list[Any]] = field(default_factory=dict)
    usages: dict[str, UsageEvent] = field(default_factory=dict)

    @property
    def backend(self) -> UpstreamBackend:
        assert isinstance(self.service.backend, UpstreamBackend)
        return self.service.backend

    async def hand_off(self, request_id: str, **request: Any) -> HopAck:
        raw = json.loads(EXAMPLE.read_text())
        raw["request"].update({"model": "remote", "messages": [{"role": "user", "content": PROMPT}],
                               "temperature": 0, **request})
        raw.update(request_id=request_id, reply_subject=f"test.up.{request_id}", cache=None)
        raw["route"]["tier"] = self.tier
        env = TaskEnvelope.model_validate(raw)
        msg = await self.nc.request(infer_subject(self.tier, Priority.INTERACTIVE), env.model_dump_json().encode(),
                                    timeout=10)
        return HopAck.model_validate_json(msg.data)

    async def ask(self, request_id: str, **request: Any) -> tuple[Final | ErrorReply, list[Any], UsageEvent]:
        """Hand a task off, wait for its last reply and usage event."""
        ack = await self.hand_off(request_id, **request)
        assert ack.accepted, ack
        for _ in range(3000):
            replies = self.replies.get(request_id, [])
            if replies and isinstance(replies[-1], Final | ErrorReply) and request_id in self.usages:
                return replies[-1], replies, self.usages[request_id]
            await asyncio.sleep(0.02)
        raise AssertionError(f"no answer to {request_id}")


@asynccontextmanager
async def upstream_worker(nats_url: str, tier: str, base_url: str, **upstream: Any) -> AsyncIterator[Worker]:
    path = tiers_file({tier: {"kind": "upstream", "model": "remote-135m", "upstream": {
        "base_url": base_url, "model": vllm_serve.SERVED_NAME, "retries": 1, "backoff_s": 0.05, **upstream}}})
    settings = WorkerSettings(nats_url=nats_url, instance_id=f"w-{tier}", tier=tier, tiers_file=path,
                              pricebook_file=PRICEBOOK, bulk_enabled=False, heartbeat_interval_s=0.2)
    service = WorkerService(settings)
    nc = await nats.connect(nats_url)
    worker = Worker(service, nc, tier)

    async def on_reply(msg: Any) -> None:
        reply = REPLY_ADAPTER.validate_json(msg.data)
        worker.replies.setdefault(reply.request_id, []).append(reply)

    async def on_usage(msg: Any) -> None:
        event = UsageEvent.model_validate_json(msg.data)
        if event.worker == settings.instance_id:
            worker.usages[event.request_id] = event

    await nc.subscribe("test.up.*", cb=on_reply)
    await nc.subscribe(USAGE_SUBJECT, cb=on_usage)
    await service.start()
    try:
        yield worker
    finally:
        await service.drain()
        await service.close()
        await nc.close()


async def direct(port: int, **request: Any) -> dict[str, Any]:
    """The same request straight to vllm serve: what the provider itself answers."""
    body = {"model": vllm_serve.SERVED_NAME, "messages": [{"role": "user", "content": PROMPT}], "temperature": 0,
            **request}
    async with aiohttp.ClientSession() as session, \
            session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as response:
        answer: dict[str, Any] = await response.json()
        return answer


async def test_plain_and_streamed_answers_carry_the_providers_text_and_usage(
        nats_server: NatsServer, vllm_port: int) -> None:
    expected = await direct(vllm_port, max_tokens=24)
    async with upstream_worker(nats_server.url, "up-plain", f"http://127.0.0.1:{vllm_port}/v1") as w:
        plain, replies, usage = await w.ask("p1", max_tokens=24, stream=False)
        assert isinstance(plain, Final) and [type(r) for r in replies] == [Accepted, Final]
        assert (replies[0].tier, replies[0].model) == ("up-plain", "remote-135m")  # the tier that took it
        assert plain.text == expected["choices"][0]["message"]["content"] and "Paris" in plain.text
        assert plain.model == "remote-135m" and plain.tier == "up-plain"
        want = expected["usage"]
        assert (plain.usage.prompt_tokens, plain.usage.completion_tokens) == (want["prompt_tokens"],
                                                                            want["completion_tokens"])
        assert (usage.status, usage.prompt_tokens, usage.completion_tokens, usage.tier) == (
            "ok", want["prompt_tokens"], want["completion_tokens"], "up-plain")

        streamed, replies, usage = await w.ask("s1", max_tokens=24, stream=True)
        assert isinstance(streamed, Final)
        chunks = [r for r in replies if isinstance(r, Chunk)]
        assert isinstance(replies[0], Accepted) and replies[-1] is streamed
        assert chunks and all(isinstance(r, Chunk) for r in replies[1:-1])
        assert "".join(c.delta for c in chunks) == streamed.text == plain.text
        # The counts are the provider's last event's, not estimates.
        assert (usage.prompt_tokens, usage.completion_tokens) == (want["prompt_tokens"], want["completion_tokens"])
        assert (streamed.usage.prompt_tokens, streamed.usage.completion_tokens) == (
            want["prompt_tokens"], want["completion_tokens"])


async def test_a_request_the_provider_refuses_is_a_400_with_its_message(
        nats_server: NatsServer, vllm_port: int) -> None:
    refusal = await direct(vllm_port, max_tokens=100_000)
    async with upstream_worker(nats_server.url, "up-plain", f"http://127.0.0.1:{vllm_port}/v1") as w:
        error, _, usage = await w.ask("e1", max_tokens=100_000)
        assert w.backend.breaker.state is State.CLOSED
    assert isinstance(error, ErrorReply) and error.status == 400
    assert refusal["error"]["message"] in error.message  # vLLM's own words
    assert usage.status == "error" and usage.completion_tokens == 0


async def test_a_provider_slower_than_the_timeout_is_a_504_after_the_retries(
        nats_server: NatsServer, vllm_port: int) -> None:
    async with upstream_worker(nats_server.url, "up-slow", f"http://127.0.0.1:{vllm_port}/v1",
                               timeout_s=0.05) as w:
        error, _, usage = await w.ask("t1", max_tokens=300, stream=False)
    assert isinstance(error, ErrorReply) and (error.status, error.code) == (504, "upstream_timeout")
    assert "after 2 attempts" in error.message
    assert usage.status == "error"


async def test_the_breaker_opens_while_the_provider_is_cut_off_and_a_probe_closes_it(
        nats_server: NatsServer, vllm_port: int) -> None:
    proxy = await TcpProxy(vllm_port).start()
    try:
        async with upstream_worker(nats_server.url, "up-cut", f"http://127.0.0.1:{proxy.port}/v1",
                                   breaker={"failures": 2, "open_s": 1.0}) as w:
            ok, _, _ = await w.ask("b0", max_tokens=4)
            assert isinstance(ok, Final)
            await proxy.cut()
            for i in (1, 2):
                failed, _, _ = await w.ask(f"b{i}", max_tokens=4)
                assert isinstance(failed, ErrorReply) and (failed.status, failed.code) == (503, UNAVAILABLE)
            assert w.backend.breaker.state is State.OPEN
            refused = await w.hand_off("b3", max_tokens=4)
            assert not refused.accepted and not refused.retry and refused.status == 503
            assert refused.reason is not None and refused.reason.startswith(f"{UNAVAILABLE}: tier 'up-cut'")
            assert "b3" not in w.replies and "b3" not in w.usages  # refused unsent and uncharged

            await proxy.restore()
            while w.backend.breaker.state is State.OPEN:
                await asyncio.sleep(0.1)
            probe, _, _ = await w.ask("b4", max_tokens=4)
            assert isinstance(probe, Final) and w.backend.breaker.state is State.CLOSED
            assert (await w.hand_off("b5", max_tokens=4)).accepted
    finally:
        await proxy.stop()
