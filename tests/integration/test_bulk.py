"""Bulk work through JetStream: stored once, charged once, never ahead of chat traffic."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from contracts.subjects import (
    BULK_RESULTS_STREAM,
    HEARTBEAT_SUBJECT,
    USAGE_STREAM,
    Priority,
    bulk_result_subject,
    infer_subject,
)
from contracts.v1 import REPLY_ADAPTER, Final, TaskEnvelope, UsageEvent, WorkerHeartbeat
from tests.integration.conftest import chat, running_ingress, running_worker
from tests.support.natsd import NatsServer

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).resolve().parents[1] / "examples/v1/task_envelope.json"


def bulk_task(job: str, i: int, max_tokens: int = 3) -> TaskEnvelope:
    raw = json.loads(EXAMPLE.read_text())
    raw.update(request_id=f"{job}-{i}", priority="bulk", reply_subject=bulk_result_subject(job), job_id=job)
    raw["request"].update(stream=False, max_tokens=max_tokens)
    return TaskEnvelope.model_validate(raw)


async def read_all(js, stream: str, subject: str) -> list[bytes]:  # type: ignore[no-untyped-def]
    sub = await js.pull_subscribe(subject, stream=stream,
                                  config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
    out: list[bytes] = []
    while True:
        try:
            msgs = await sub.fetch(100, timeout=0.5)
        except TimeoutError:
            break
        for m in msgs:
            out.append(m.data)
            await m.ack()
    await sub.unsubscribe()
    return out


async def test_bulk_results_are_stored_and_charged_once(fresh_nats_server: NatsServer) -> None:
    url = fresh_nats_server.url
    async with running_worker(url, max_num_seqs=4, interactive_reserve=1):
        nc = await nats.connect(url)
        js = nc.jetstream()
        subject = infer_subject("small", Priority.BULK)
        for i in range(6):
            task = bulk_task("job1", i)
            await js.publish(subject, task.model_dump_json().encode(), headers={"Nats-Msg-Id": task.request_id})
        # The same item published again (a client retry) is de-duplicated by the stream...
        dup = bulk_task("job1", 0)
        await js.publish(subject, dup.model_dump_json().encode(), headers={"Nats-Msg-Id": dup.request_id})
        # ...and one redelivered without its id (past the window) is answered again but stored once.
        await asyncio.sleep(1.0)
        await js.publish(subject, dup.model_dump_json().encode())
        deadline = time.monotonic() + 15
        results: list[bytes] = []
        while time.monotonic() < deadline:
            results = await read_all(js, BULK_RESULTS_STREAM.name, bulk_result_subject("job1"))
            if len(results) >= 6:
                break
            await asyncio.sleep(0.3)
        await asyncio.sleep(1.0)
        results = await read_all(js, BULK_RESULTS_STREAM.name, bulk_result_subject("job1"))
        usage = [UsageEvent.model_validate_json(b) for b in await read_all(js, USAGE_STREAM.name, "sf.v1.usage")]
        await nc.close()
    finals = [REPLY_ADAPTER.validate_json(b) for b in results]
    assert sorted(f.request_id for f in finals) == [f"job1-{i}" for i in range(6)]
    assert all(isinstance(f, Final) and f.usage.completion_tokens == 3 for f in finals)
    assert sorted(u.request_id for u in usage) == [f"job1-{i}" for i in range(6)]
    assert {u.priority for u in usage} == {Priority.BULK}


async def test_a_bulk_backlog_never_blocks_chat(fresh_nats_server: NatsServer) -> None:
    url = fresh_nats_server.url
    beats: list[WorkerHeartbeat] = []
    async with running_worker(url, seconds_per_token=0.05, max_num_seqs=4, interactive_reserve=1,
                              max_waiting=0):
        nc = await nats.connect(url)

        async def on_beat(msg) -> None:  # type: ignore[no-untyped-def]
            beats.append(WorkerHeartbeat.model_validate_json(msg.data))

        await nc.subscribe(HEARTBEAT_SUBJECT, cb=on_beat)
        js = nc.jetstream()
        for i in range(30):
            task = bulk_task("backlog", i, max_tokens=8)
            await js.publish(infer_subject("small", Priority.BULK), task.model_dump_json().encode(),
                             headers={"Nats-Msg-Id": task.request_id})
        async with running_ingress(url) as (_, client):
            await asyncio.sleep(0.5)  # the backlog is being worked on
            for _ in range(3):
                r = await client.post("/v1/chat/completions", json=chat(max_tokens=2))
                assert r.status_code == 200, r.text
        await nc.close()
    busy = [b for b in beats if b.inflight_bulk]
    assert busy, "bulk work was never running"
    # Bulk never takes the slot reserved for interactive traffic.
    assert max(b.inflight_bulk for b in beats) <= 4 - 1


async def test_chat_preempts_bulk_which_runs_again_and_is_charged_once(fresh_nats_server: NatsServer) -> None:
    url = fresh_nats_server.url
    async with running_worker(url, seconds_per_token=0.05, max_num_seqs=6, interactive_reserve=1,
                              bulk_slots_with_chat=1, chat_quiet_s=0.5) as worker:
        nc = await nats.connect(url)
        js = nc.jetstream()
        for i in range(8):
            task = bulk_task("preempt", i, max_tokens=20)
            await js.publish(infer_subject("small", Priority.BULK), task.model_dump_json().encode(),
                             headers={"Nats-Msg-Id": task.request_id})
        deadline = time.monotonic() + 10
        while worker.capacity.bulk < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert worker.capacity.bulk == 5
        async with running_ingress(url) as (_, client):
            r = await client.post("/v1/chat/completions", json=chat(max_tokens=2))
            assert r.status_code == 200, r.text
            assert worker.capacity.bulk <= 1  # the rest were handed back when the chat arrived
        deadline = time.monotonic() + 60
        results: list[bytes] = []
        while time.monotonic() < deadline:
            results = await read_all(js, BULK_RESULTS_STREAM.name, bulk_result_subject("preempt"))
            if len(results) >= 8:
                break
            await asyncio.sleep(0.3)
        usage = [UsageEvent.model_validate_json(b) for b in await read_all(js, USAGE_STREAM.name, "sf.v1.usage")]
        await nc.close()
    finals = [REPLY_ADAPTER.validate_json(b) for b in results]
    assert sorted(f.request_id for f in finals) == [f"preempt-{i}" for i in range(8)]
    assert all(isinstance(f, Final) and f.finish_reason != "abort" for f in finals)
    tokens = {f.request_id: f.usage.completion_tokens for f in finals if isinstance(f, Final)}
    bulk_usage = [u for u in usage if u.priority is Priority.BULK]
    # Preempted tasks left no "aborted" charge behind: one charge each, for the whole answer.
    assert sorted(u.request_id for u in bulk_usage) == [f"preempt-{i}" for i in range(8)]
    assert all(u.status == "ok" and u.completion_tokens == tokens[u.request_id] for u in bulk_usage)
