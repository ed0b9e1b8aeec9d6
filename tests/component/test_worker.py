"""The worker's bus handlers with the fake engine, on a real nats-server.

Interactive hand-offs and replies run on raw nats-py (``services.shared.lane``), which
FastStream's in-memory broker cannot carry; the test drives the worker as ingress would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from contracts.subjects import CANCEL_SUBJECT, USAGE_SUBJECT, Priority, infer_subject
from contracts.v1 import REPLY_ADAPTER, CancelRequest, ErrorReply, Final, HopAck, TaskEnvelope, UsageEvent
from services.worker.service import WorkerService
from services.worker.settings import WorkerSettings
from tests.support.config import pricebook_with
from tests.support.fake_provider import FakeProvider
from tests.support.fakes import FakeEngine
from tests.support.natsd import NatsServer
from tests.support.tier_files import tiers_file

pytestmark = pytest.mark.component
EXAMPLE = Path(__file__).resolve().parents[1] / "examples/v1/task_envelope.json"
#: A tier of these tests' own, so no other test's worker takes their tasks.
TIER = "component-worker"
SUBJECT = infer_subject(TIER, Priority.INTERACTIVE)


def envelope(request_id: str, **request: object) -> TaskEnvelope:
    raw = json.loads(EXAMPLE.read_text())
    raw["request"].update(request)
    raw["request_id"] = request_id
    raw["reply_subject"] = f"test.reply.{request_id}"
    raw["route"]["tier"] = TIER
    return TaskEnvelope.model_validate(raw)


@dataclass
class Harness:
    service: WorkerService
    nc: Client
    replies: list[object] = field(default_factory=list)
    usages: list[UsageEvent] = field(default_factory=list)

    async def hand_off(self, env: TaskEnvelope) -> HopAck:
        msg = await self.nc.request(SUBJECT, env.model_dump_json().encode(), timeout=5)
        return HopAck.model_validate_json(msg.data)


@asynccontextmanager
async def running_worker(nats_url: str, slots: int, waiting: int, seconds_per_token: float = 0.0,
                         tier: dict[str, object] | None = None) -> AsyncIterator[Harness]:
    """The worker of ``TIER``: self-hosted on the fake engine, or ``tier`` as in the tiers file."""
    settings = WorkerSettings(nats_url=nats_url, instance_id="w-test", tier=TIER, pricebook_file=pricebook_with(TIER),
                              tiers_file=tiers_file({TIER: tier or {"kind": "vllm", "model": "smollm2-135m"}}),
                              max_num_seqs=slots,
                              max_waiting=waiting, interactive_reserve=0, bulk_enabled=False)
    service = WorkerService(settings, lambda s: FakeEngine(seconds_per_token=seconds_per_token))
    nc = await nats.connect(nats_url)
    harness = Harness(service, nc)

    async def on_reply(msg):  # type: ignore[no-untyped-def]
        harness.replies.append(REPLY_ADAPTER.validate_json(msg.data))

    async def on_usage(msg):  # type: ignore[no-untyped-def]
        event = UsageEvent.model_validate_json(msg.data)
        if event.worker == "w-test":
            harness.usages.append(event)

    await nc.subscribe("test.reply.*", cb=on_reply)
    await nc.subscribe(USAGE_SUBJECT, cb=on_usage)
    await service.start()
    try:
        yield harness
    finally:
        await service.close()
        await nc.close()


async def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_accepts_answers_and_reports_usage(nats_server: NatsServer) -> None:
    async with running_worker(nats_server.url, slots=2, waiting=0) as w:
        ack = await w.hand_off(envelope("r1", max_tokens=3))
        assert ack.accepted and ack.instance == "w-test"
        await wait_for(lambda: any(isinstance(r, Final) for r in w.replies) and w.usages)
    kinds = [type(r).__name__ for r in w.replies]
    assert kinds == ["Accepted", "Chunk", "Chunk", "Chunk", "Final"]
    assert w.usages[0].request_id == "r1" and w.usages[0].completion_tokens == 3


async def test_full_worker_refuses_with_retry(nats_server: NatsServer) -> None:
    async with running_worker(nats_server.url, slots=1, waiting=0, seconds_per_token=0.2) as w:
        first = await w.hand_off(envelope("a", max_tokens=5))
        second = await w.hand_off(envelope("b", max_tokens=5))
        assert first.accepted
        assert not second.accepted and second.retry and second.reason == "at capacity"


async def test_a_malformed_task_is_refused_for_good(nats_server: NatsServer) -> None:
    async with running_worker(nats_server.url, slots=1, waiting=0) as w:
        msg = await w.nc.request(SUBJECT, b'{"request_id": "m1"}', timeout=5)
        ack = HopAck.model_validate_json(msg.data)
        assert not ack.accepted and not ack.retry
        assert ack.reason is not None and "malformed task envelope" in ack.reason
        # The worker still takes well-formed work.
        assert (await w.hand_off(envelope("m2", max_tokens=1))).accepted


async def test_cancel_aborts_the_engine_request(nats_server: NatsServer) -> None:
    async with running_worker(nats_server.url, slots=2, waiting=0, seconds_per_token=0.1) as w:
        await w.hand_off(envelope("c1", max_tokens=12))
        await asyncio.sleep(0.25)
        await w.nc.publish(CANCEL_SUBJECT, CancelRequest(request_id="c1").model_dump_json().encode())
        await wait_for(lambda: bool(w.usages))
        assert w.usages[0].status == "aborted"
        assert w.service.engine.aborted == ["c1"]  # type: ignore[union-attr]


async def test_an_upstream_worker_refuses_at_once_for_good_while_its_provider_is_down(
        nats_server: NatsServer) -> None:
    provider = await FakeProvider().start()
    tier = {"kind": "upstream", "model": "remote", "upstream": {
        "base_url": provider.base_url, "model": "m", "retries": 0, "breaker": {"failures": 1, "open_s": 60}}}
    try:
        async with running_worker(nats_server.url, slots=2, waiting=0, tier=tier) as w:
            assert w.service.engine is None  # no engine: the provider answers
            provider.fail(503, "provider overloaded")
            assert (await w.hand_off(envelope("u1", max_tokens=3))).accepted
            await wait_for(lambda: any(isinstance(r, ErrorReply) for r in w.replies))
            ack = await w.hand_off(envelope("u2", max_tokens=3))
            assert (ack.accepted, ack.retry, ack.status) == (False, False, 503)
            assert ack.reason is not None and ack.reason.startswith("upstream_unavailable: tier 'component-worker'")
            assert "provider overloaded" in ack.reason
            assert len(provider.requests) == 1
            ready, details = w.service.ready()
            assert ready and str(details["provider"]).startswith("upstream_unavailable")
    finally:
        await provider.stop()
