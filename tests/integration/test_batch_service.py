"""The batch service on a real nats-server with a real worker (fake engine): both entry points,
bad lines, cancel, expiry, and a replica replaced mid-job."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from contracts.subjects import (
    BATCH_START_SUBJECT,
    USAGE_STREAM,
    public_bulk_end_subject,
    public_bulk_output_subject,
    public_bulk_subject,
)
from contracts.v1 import BatchStart, BulkEnd, UsageEvent, bus_batch_id
from services.batch.files import FilePurpose
from services.batch.job import BatchJob, BatchStatus
from services.batch.job_store import JobStore
from services.batch.store import FileStore
from tests.integration.conftest import running_worker
from tests.integration.test_bulk import read_all
from tests.support.batch import batch_line, read_lines, running_batch, wait_for_job
from tests.support.natsd import NatsServer

pytestmark = pytest.mark.integration

TENANT = "acme"


async def submit_file(js: Any, lines: list[bytes], tenant: str = TENANT) -> BatchJob:
    """What ingress does for POST /v1/files + POST /v1/batches."""
    files = await FileStore.open(js, max_bytes=1 << 26)
    jobs = await JobStore.open(js)
    stored = await files.put(tenant, "input.jsonl", FilePurpose.BATCH, b"".join(line + b"\n" for line in lines))
    job = BatchJob.create(tenant=tenant, input_file_id=stored.id, now=time.time())
    await jobs.create(job)
    await js.publish(BATCH_START_SUBJECT, BatchStart(tenant=tenant, batch_id=job.id).model_dump_json().encode(),
                     headers={"Nats-Msg-Id": f"start-{job.id}"})
    return job


def encode(line: dict[str, Any]) -> bytes:
    return json.dumps(line).encode()


async def test_a_file_batch_answers_every_line_once_and_a_bad_line_fails_alone(
        fresh_nats_server: NatsServer) -> None:
    url = fresh_nats_server.url
    lines = [encode(batch_line(f"q{i}", f"question {i}")) for i in range(12)]
    lines[3] = b"{not json"
    lines[7] = encode({**batch_line("q7", "x"), "body": {"model": "smollm2-135m", "messages": []}})
    async with running_worker(url, max_num_seqs=4, interactive_reserve=1), running_batch(url, pipeline=["infer"]):
        nc = await nats.connect(url)
        js = nc.jetstream()
        job = await submit_file(js, lines)
        done = await wait_for_job(js, TENANT, job.id)
        output = await read_lines(js, TENANT, done.output_file_id)
        errors = await read_lines(js, TENANT, done.error_file_id)
        usage = [UsageEvent.model_validate_json(b) for b in await read_all(js, USAGE_STREAM.name, "sf.v1.usage")]
        await nc.close()
    assert done.status is BatchStatus.COMPLETED
    assert (done.total, len(done.completed), len(done.failed)) == (12, 10, 2)
    assert [line["custom_id"] for line in output] == [f"q{i}" for i in range(12) if i not in (3, 7)]
    assert all(line["response"]["status_code"] == 200 for line in output)
    assert all(line["response"]["body"]["object"] == "chat.completion" for line in output)
    assert [line["custom_id"] for line in errors] == [None, "q7"]
    assert errors[0]["error"]["code"] == "invalid_json_line"
    assert errors[1]["response"]["status_code"] == 400
    charged = sorted(u.request_id for u in usage)
    assert charged == sorted(f"{job.id}-{i}" for i in range(12) if i not in (3, 7))
    assert done.usage.output_tokens == sum(u.completion_tokens for u in usage)


async def test_a_bus_job_runs_after_its_end_message_with_live_results(fresh_nats_server: NatsServer) -> None:
    url = fresh_nats_server.url
    async with running_worker(url, max_num_seqs=4, interactive_reserve=1), running_batch(url, pipeline=["infer"]):
        nc = await nats.connect(url)
        js = nc.jetstream()
        live: list[bytes] = []
        done_msgs: list[bytes] = []
        out = public_bulk_output_subject(TENANT, "nightly")
        await nc.subscribe(out, cb=_collect(live))
        await nc.subscribe(out + ".done", cb=_collect(done_msgs))
        for i in range(8):
            line = {"custom_id": f"b{i}", "body": batch_line("", f"bus {i}")["body"]}
            await js.publish(public_bulk_subject(TENANT, "nightly"), json.dumps(line).encode(),
                             headers={"Nats-Msg-Id": f"nightly-{i}"})
        # A retried publish of a line is stored once.
        await js.publish(public_bulk_subject(TENANT, "nightly"), b'{"custom_id": "b0", "body": {}}',
                         headers={"Nats-Msg-Id": "nightly-0"})
        await js.publish(public_bulk_subject(TENANT, "nightly"), b"garbage", headers={"Nats-Msg-Id": "nightly-8"})
        await js.publish(public_bulk_end_subject(TENANT, "nightly"), BulkEnd(lines=9).model_dump_json().encode())
        batch_id = bus_batch_id(TENANT, "nightly")
        done = await wait_for_job(js, TENANT, batch_id)
        output = await read_lines(js, TENANT, done.output_file_id)
        errors = await read_lines(js, TENANT, done.error_file_id)
        await asyncio.sleep(0.3)
        await nc.close()
    assert done.status is BatchStatus.COMPLETED, done.errors
    assert done.bus_job == "nightly"
    assert [line["custom_id"] for line in output] == [f"b{i}" for i in range(8)]
    assert [line["error"]["code"] for line in errors] == ["invalid_json_line"]
    assert sorted(json.loads(b)["custom_id"] for b in live) == [f"b{i}" for i in range(8)]
    assert json.loads(done_msgs[0])["status"] == "completed"


def _collect(into: list[bytes]) -> Callable[[Msg], Awaitable[None]]:
    async def on(msg: Msg) -> None:
        into.append(msg.data)

    return on


async def test_a_bus_job_whose_line_count_is_wrong_fails_naming_it(fresh_nats_server: NatsServer) -> None:
    url = fresh_nats_server.url
    async with running_batch(url, pipeline=["infer"]):
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.publish(public_bulk_subject(TENANT, "short"), encode({"custom_id": "a", "body": {}}))
        await js.publish(public_bulk_end_subject(TENANT, "short"), BulkEnd(lines=3).model_dump_json().encode())
        done = await wait_for_job(js, TENANT, bus_batch_id(TENANT, "short"))
        await nc.close()
    assert done.status is BatchStatus.FAILED
    assert done.errors[0].code == "line_count_mismatch"


async def test_cancel_keeps_what_finished_and_never_runs_the_rest(fresh_nats_server: NatsServer) -> None:
    url = fresh_nats_server.url
    lines = [encode(batch_line(f"c{i}", f"slow {i}", max_tokens=10)) for i in range(40)]
    async with running_worker(url, seconds_per_token=0.03, max_num_seqs=3, interactive_reserve=1), \
            running_batch(url, pipeline=["infer"], batch_max_in_flight=4):
        nc = await nats.connect(url)
        js = nc.jetstream()
        job = await submit_file(js, lines)
        jobs = await JobStore.open(js)
        deadline = time.monotonic() + 30
        while len((await jobs.get(TENANT, job.id)).completed) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await jobs.update(TENANT, job.id, lambda j: j.cancel(time.time()))
        done = await wait_for_job(js, TENANT, job.id)
        output = await read_lines(js, TENANT, done.output_file_id)
        errors = await read_lines(js, TENANT, done.error_file_id)
        usage = [UsageEvent.model_validate_json(b) for b in await read_all(js, USAGE_STREAM.name, "sf.v1.usage")]
        await nc.close()
    assert done.status is BatchStatus.CANCELLED
    assert len(done.completed) >= 3 and len(done.unrun) >= 20
    assert len(output) + len(errors) == 40
    assert len(output) == len(done.completed)
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    # Only what ran was charged, each once.
    charged = [u.request_id for u in usage]
    assert len(charged) == len(set(charged)) == len(output)


async def test_a_job_past_its_window_expires_with_what_finished(fresh_nats_server: NatsServer) -> None:
    url = fresh_nats_server.url
    lines = [encode(batch_line(f"e{i}", f"slow {i}", max_tokens=10)) for i in range(30)]
    async with running_worker(url, seconds_per_token=0.03, max_num_seqs=3, interactive_reserve=1), \
            running_batch(url, pipeline=["infer"], batch_max_in_flight=2):
        nc = await nats.connect(url)
        js = nc.jetstream()
        job = await submit_file(js, lines)
        jobs = await JobStore.open(js)
        await wait_for_job(js, TENANT, job.id, until=frozenset({BatchStatus.IN_PROGRESS}))
        await jobs.update(TENANT, job.id, lambda j: j.model_copy(update={"expires_at": int(time.time())}))
        done = await wait_for_job(js, TENANT, job.id)
        errors = await read_lines(js, TENANT, done.error_file_id)
        await nc.close()
    assert done.status is BatchStatus.EXPIRED
    assert len(done.completed) + len(done.unrun) == 30
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}


async def test_a_replaced_batch_replica_loses_and_repeats_nothing(fresh_nats_server: NatsServer) -> None:
    url = fresh_nats_server.url
    lines = [encode(batch_line(f"r{i}", f"item {i}", max_tokens=6)) for i in range(30)]
    async with running_worker(url, seconds_per_token=0.02, max_num_seqs=4, interactive_reserve=1):
        nc = await nats.connect(url)
        js = nc.jetstream()
        async with running_batch(url, pipeline=["infer"], batch_max_in_flight=4) as first:
            job = await submit_file(js, lines)
            jobs = await JobStore.open(js)
            deadline = time.monotonic() + 30
            while len((await jobs.get(TENANT, job.id)).completed) < 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            # Gone without a drain: its held items are neither acknowledged nor handed back.
            first._stopping = True
            for task in [*first._loops, *first._work]:
                task.cancel()
        async with running_batch(url, pipeline=["infer"], batch_max_in_flight=4):
            done = await wait_for_job(js, TENANT, job.id, timeout_s=120)
            output = await read_lines(js, TENANT, done.output_file_id)
        usage = [UsageEvent.model_validate_json(b) for b in await read_all(js, USAGE_STREAM.name, "sf.v1.usage")]
        await nc.close()
    assert done.status is BatchStatus.COMPLETED
    assert [line["custom_id"] for line in output] == [f"r{i}" for i in range(30)]
    charged = [u.request_id for u in usage]
    assert sorted(set(charged)) == sorted(f"{job.id}-{i}" for i in range(30))
