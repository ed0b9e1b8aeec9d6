"""The worker's bus handlers with the in-memory broker and the fake engine."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from faststream.nats import TestNatsBroker

from contracts.subjects import CANCEL_SUBJECT, USAGE_STREAM, USAGE_SUBJECT, Priority, infer_subject
from contracts.v1 import REPLY_ADAPTER, CancelRequest, Final, HopAck, TaskEnvelope, UsageEvent
from services.worker.service import WorkerService
from services.worker.settings import WorkerSettings
from tests.support.fakes import FakeEngine

pytestmark = pytest.mark.component
EXAMPLE = Path(__file__).resolve().parents[1] / "examples/v1/task_envelope.json"


def envelope(request_id: str, **request: object) -> TaskEnvelope:
    raw = json.loads(EXAMPLE.read_text())
    raw["request"].update(request)
    raw["request_id"] = request_id
    raw["reply_subject"] = f"test.reply.{request_id}"
    return TaskEnvelope.model_validate(raw)


async def run_worker(slots: int, waiting: int, seconds_per_token: float = 0.0):  # type: ignore[no-untyped-def]
    settings = WorkerSettings(instance_id="w-test", max_num_seqs=slots, max_waiting=waiting,
                              interactive_reserve=0)
    service = WorkerService(settings)
    service.engine = FakeEngine(seconds_per_token=seconds_per_token)
    replies: list[object] = []
    usages: list[UsageEvent] = []

    @service.broker.subscriber("test.reply.*")
    async def collect(body: dict[str, object]) -> None:
        replies.append(REPLY_ADAPTER.validate_python(body))

    @service.broker.subscriber(USAGE_SUBJECT, stream=USAGE_STREAM.name)
    async def usage(event: UsageEvent) -> None:
        usages.append(event)

    return service, replies, usages


async def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_accepts_answers_and_reports_usage() -> None:
    service, replies, usages = await run_worker(slots=2, waiting=0)
    async with TestNatsBroker(service.broker) as broker:
        msg = await broker.request(envelope("r1", max_tokens=3), infer_subject("small", Priority.INTERACTIVE))
        ack = HopAck.model_validate_json(msg.body)
        assert ack.accepted and ack.instance == "w-test"
        await wait_for(lambda: any(isinstance(r, Final) for r in replies) and usages)
    kinds = [type(r).__name__ for r in replies]
    assert kinds == ["Accepted", "Chunk", "Chunk", "Chunk", "Final"]
    assert usages[0].request_id == "r1" and usages[0].completion_tokens == 3


async def test_full_worker_refuses_with_retry() -> None:
    service, _, _ = await run_worker(slots=1, waiting=0, seconds_per_token=0.2)
    async with TestNatsBroker(service.broker) as broker:
        subject = infer_subject("small", Priority.INTERACTIVE)
        first = HopAck.model_validate_json((await broker.request(envelope("a", max_tokens=5), subject)).body)
        second = HopAck.model_validate_json((await broker.request(envelope("b", max_tokens=5), subject)).body)
        assert first.accepted
        assert not second.accepted and second.retry and second.reason == "at capacity"
        await service.close()


async def test_cancel_aborts_the_engine_request() -> None:
    service, _, usages = await run_worker(slots=2, waiting=0, seconds_per_token=0.1)
    async with TestNatsBroker(service.broker) as broker:
        await broker.request(envelope("c1", max_tokens=12), infer_subject("small", Priority.INTERACTIVE))
        await asyncio.sleep(0.25)
        await broker.publish(CancelRequest(request_id="c1"), CANCEL_SUBJECT)
        await wait_for(lambda: bool(usages))
    assert usages[0].status == "aborted"
    assert service.engine.aborted == ["c1"]  # type: ignore[union-attr]
