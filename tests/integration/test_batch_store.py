"""The Batch API's storage on a real nats-server: files (object store + records) and jobs (KV
with optimistic updates, create-only item results), tenant isolation, and a server restart."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import KeyWrongLastSequenceError

from services.batch.files import FilePurpose
from services.batch.job import BatchJob, BatchStatus, WrongState
from services.batch.job_store import JobStore
from services.batch.store import FileStore
from services.shared.errors import BadRequest, NotFound, PayloadTooLarge
from services.stack import nats_server_binary, wait_for_port
from tests.support.natsd import NatsServer, start_nats_server

pytestmark = pytest.mark.integration

BATCH = FilePurpose.BATCH
LINE = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


def names() -> dict[str, str]:
    # Buckets of the test's own: the session's server is shared.
    tag = uuid.uuid4().hex[:10]
    return {"files_bucket": f"TF_{tag}", "records_bucket": f"TM_{tag}"}


@pytest.fixture
async def files(nc: Client) -> AsyncIterator[FileStore]:
    js, buckets = nc.jetstream(), names()
    yield await FileStore.open(js, max_bytes=1000, **buckets)
    await js.delete_object_store(buckets["files_bucket"])
    await js.delete_key_value(buckets["records_bucket"])


@pytest.fixture
async def jobs(nc: Client) -> AsyncIterator[JobStore]:
    js, tag = nc.jetstream(), uuid.uuid4().hex[:10]
    yield await JobStore.open(js, jobs_bucket=f"TB_{tag}", items_bucket=f"TI_{tag}")
    await js.delete_key_value(f"TB_{tag}")
    await js.delete_key_value(f"TI_{tag}")


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def new_job(tenant: str, now: float = 1_000_000.0) -> BatchJob:
    return BatchJob.create(tenant=tenant, input_file_id="file-x", now=now)


async def test_a_file_round_trips_from_bytes_and_from_chunks(files: FileStore) -> None:
    one = await files.put("acme", "in.jsonl", BATCH, LINE * 3, expires_at=None, requests=3)
    assert one.id.startswith("file-") and one.bytes == len(LINE) * 3
    assert await files.get("acme", one.id) == one
    assert await files.read("acme", one.id) == LINE * 3
    two = await files.put("acme", "in2.jsonl", BATCH, chunks(LINE, b"", LINE), expires_at=123)
    assert two.bytes == 2 * len(LINE) and two.expires_at == 123
    assert b"".join([c async for c in await files.content("acme", two.id)]) == LINE * 2
    empty = await files.put("acme", "empty.jsonl", BATCH, b"")
    assert await files.read("acme", empty.id) == b""
    await files.delete("acme", one.id)
    with pytest.raises(NotFound):
        await files.get("acme", one.id)
    with pytest.raises(NotFound):
        await files.read("acme", one.id)
    assert [f.id for f in await files.list("acme")] == [empty.id, two.id]


async def test_another_tenants_file_is_indistinguishable_from_a_missing_one(files: FileStore) -> None:
    mine = await files.put("acme", "in.jsonl", BATCH, LINE)
    await files.put("acme.eu", "in.jsonl", BATCH, LINE)  # "acme.eu" must not fall under "acme"
    for tenant, file_id in (("other", mine.id), ("acme.eu", mine.id), ("acme", "file-missing")):
        with pytest.raises(NotFound) as caught:
            await files.get(tenant, file_id)
        assert (caught.value.status, caught.value.param) == (404, "file_id")
        with pytest.raises(NotFound):
            await files.content(tenant, file_id)
        with pytest.raises(NotFound):
            await files.delete(tenant, file_id)
    with pytest.raises(NotFound):  # an id that is no key token names nothing either
        await files.get("acme", "file-x.>")
    assert await files.list("other") == []
    with pytest.raises(BadRequest, match="after"):
        await files.list("other", after=mine.id)
    assert [f.id for f in await files.list("acme")] == [mine.id]
    assert await files.read("acme", mine.id) == LINE


async def test_a_too_large_upload_stores_nothing(nc: Client, files: FileStore) -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        await files.put("acme", "big.jsonl", BATCH, b"x" * 1001)
    assert caught.value.param == "file"
    with pytest.raises(PayloadTooLarge):
        await files.put("acme", "big.jsonl", BATCH, chunks(b"x" * 600, b"x" * 600, b"x" * 600))
    assert await files.list("acme") == []
    status = await files._objects.status()
    assert status.size == 0  # no chunk of either upload reached the bucket
    at_limit = await files.put("acme", "ok.jsonl", BATCH, chunks(b"x" * 500, b"x" * 500))
    assert at_limit.bytes == 1000


async def test_files_list_newest_first_by_purpose_with_a_cursor(files: FileStore) -> None:
    made = [await files.put("acme", f"{i}.jsonl", BATCH if i % 2 else FilePurpose.BATCH_OUTPUT, LINE,
                            now=1000.0 + i) for i in range(5)]
    newest_first = [f.id for f in reversed(made)]
    assert [f.id for f in await files.list("acme")] == newest_first
    page = await files.list("acme", limit=2)
    assert [f.id for f in page] == newest_first[:2]
    rest = await files.list("acme", limit=10, after=page[-1].id)
    assert [f.id for f in rest] == newest_first[2:]
    assert [f.id for f in await files.list("acme", purpose=BATCH)] == [made[3].id, made[1].id]


async def test_sweeping_deletes_expired_files_only(files: FileStore) -> None:
    old = await files.put("acme", "a", FilePurpose.BATCH_OUTPUT, LINE, expires_at=100)
    other = await files.put("other", "b", FilePurpose.BATCH_OUTPUT, LINE, expires_at=150)
    later = await files.put("acme", "c", FilePurpose.BATCH_OUTPUT, LINE, expires_at=300)
    forever = await files.put("acme", "d", BATCH, LINE)
    assert await files.sweep_expired(now=200) == 2
    for tenant, gone in (("acme", old), ("other", other)):
        with pytest.raises(NotFound):
            await files.get(tenant, gone.id)
    assert {f.id for f in await files.list("acme")} == {later.id, forever.id}
    assert await files.sweep_expired(now=200) == 0


async def test_opening_is_idempotent(nc: Client) -> None:
    js, buckets = nc.jetstream(), names()
    try:
        first = await FileStore.open(js, max_bytes=10, **buckets)
        kept = await first.put("acme", "a", BATCH, b"hello")
        again = await FileStore.open(js, max_bytes=10, **buckets)
        assert await again.read("acme", kept.id) == b"hello"
    finally:
        await js.delete_object_store(buckets["files_bucket"])
        await js.delete_key_value(buckets["records_bucket"])


async def test_a_job_round_trips_and_is_isolated_by_tenant(jobs: JobStore) -> None:
    job = new_job("acme")
    job.start(now=1_000_001, total=3)
    job.record(1, True, now=1_000_002)
    await jobs.create(job)
    assert await jobs.get("acme", job.id) == job
    with pytest.raises(ValueError, match="already exists"):
        await jobs.create(job)
    for tenant, batch_id in (("other", job.id), ("acme", "batch_missing")):
        with pytest.raises(NotFound) as caught:
            await jobs.get(tenant, batch_id)
        assert caught.value.param == "batch_id"
        with pytest.raises(NotFound):
            await jobs.update(tenant, batch_id, lambda j: j.cancel(now=1_000_003))
    assert await jobs.list("other") == []
    assert (await jobs.get("acme", job.id)).status == BatchStatus.IN_PROGRESS


async def test_jobs_list_newest_first_with_a_cursor(jobs: JobStore) -> None:
    made = [new_job("acme", now=1_000_000.0 + i) for i in range(4)]
    for i, job in enumerate(made):
        await jobs.create(job, now=1_000_000.0 + i)
    newest_first = [j.id for j in reversed(made)]
    assert [j.id for j in await jobs.list("acme")] == newest_first
    assert [j.id for j in await jobs.list("acme", limit=2, after=newest_first[0])] == newest_first[1:3]


async def test_concurrent_updates_lose_nothing(jobs: JobStore) -> None:
    job = new_job("acme")
    job.start(now=1_000_001, total=40)
    await jobs.create(job)

    conflicts = 0
    write = jobs._jobs.update

    async def counted(*args: Any, **kwargs: Any) -> int:
        nonlocal conflicts
        try:
            return await write(*args, **kwargs)
        except KeyWrongLastSequenceError:
            conflicts += 1
            raise

    jobs._jobs.update = counted  # type: ignore[method-assign]

    async def updater(indices: range) -> None:
        for index in indices:
            def record(stored: BatchJob, index: int = index) -> None:
                stored.record(index, index % 3 != 0, now=1_000_002)

            await jobs.update("acme", job.id, record)
            await asyncio.sleep(0)

    # Two updaters, one per half of the items, interleaved: their writes conflict.
    await asyncio.gather(updater(range(0, 40, 2)), updater(range(1, 40, 2)))
    stored = await jobs.get("acme", job.id)
    assert stored.finished == 40 and stored.status == BatchStatus.FINALIZING
    assert stored.failed == {i for i in range(40) if i % 3 == 0}
    assert conflicts > 0, "the two updaters never collided: the test proved nothing"


async def test_an_update_that_raises_stores_nothing(jobs: JobStore) -> None:
    job = new_job("acme")
    await jobs.create(job)
    with pytest.raises(WrongState):
        await jobs.update("acme", job.id, lambda j: j.complete(now=1_000_001, output_file_id=None,
                                                              error_file_id=None))
    assert await jobs.get("acme", job.id) == job


async def test_a_result_is_recorded_once_under_concurrent_duplicates(jobs: JobStore) -> None:
    firsts = await asyncio.gather(*(jobs.record_item("batch_abc", 7, f"copy {n}".encode()) for n in range(8)))
    assert sorted(firsts) == [False] * 7 + [True]
    stored = await jobs.item("batch_abc", 7)
    assert stored is not None and stored.startswith(b"copy ")
    assert await jobs.record_item("batch_abc", 7, b"late") is False
    assert await jobs.item("batch_abc", 7) == stored
    assert await jobs.item("batch_abc", 8) is None


async def test_items_read_back_in_index_order_per_batch(jobs: JobStore) -> None:
    for index in (10, 2, 0, 33, 1):  # arrival order is not index order
        assert await jobs.record_item("batch_a", index, f"a{index}".encode())
    await jobs.record_item("batch_ab", 5, b"other batch")  # shares a prefix: must not be read
    assert [pair async for pair in jobs.items("batch_a")] == [(i, f"a{i}".encode()) for i in (0, 1, 2, 10, 33)]
    assert [pair async for pair in jobs.items("batch_none")] == []
    await jobs.purge_items("batch_a")
    assert [pair async for pair in jobs.items("batch_a")] == []
    assert [pair async for pair in jobs.items("batch_ab")] == [(5, b"other batch")]


def restart(server: NatsServer) -> None:
    """Stop ``server`` (SIGTERM, its store kept) and start it again on the same port and store."""
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=10)
    server.process = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(server.port), "-js", "-sd", server.store_dir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_port(server.port, server.process, timeout_s=15)


async def test_files_jobs_and_items_survive_a_nats_server_restart() -> None:
    server = start_nats_server()
    try:
        client = await nats.connect(server.url)
        stored = await (await FileStore.open(client.jetstream(), max_bytes=100)).put("acme", "a", BATCH, LINE)
        job_store = await JobStore.open(client.jetstream())
        job = new_job("acme")
        await job_store.create(job)
        await job_store.record_item(job.id, 0, b"result 0")
        await client.close()
        restart(server)
        client = await nats.connect(server.url)
        deadline = time.monotonic() + 15
        while True:  # JetStream recovers its streams just after the port opens
            with contextlib.suppress(Exception):
                files = await FileStore.open(client.jetstream(), max_bytes=100)
                job_store = await JobStore.open(client.jetstream())
                break
            assert time.monotonic() < deadline, "JetStream was not back 15 s after the restart"
            await asyncio.sleep(0.2)
        assert await files.get("acme", stored.id) == stored
        assert await files.read("acme", stored.id) == LINE
        assert await job_store.get("acme", job.id) == job
        assert [pair async for pair in job_store.items(job.id)] == [(0, b"result 0")]
        assert await job_store.record_item(job.id, 0, b"again") is False
        await client.close()
    finally:
        server.stop()
