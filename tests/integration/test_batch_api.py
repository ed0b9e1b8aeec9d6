"""The Files and Batches HTTP API through the official ``openai`` SDK, against ingress on a real
nats-server: uploads, downloads, batches created, listed and cancelled, every one by tenant."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import openai
import pytest
from nats.aio.client import Client

from contracts.subjects import BATCH_START_STREAM, BATCH_START_SUBJECT
from contracts.v1 import BatchStart
from services.batch.files import FilePurpose
from services.batch.job import BatchJob, FileError
from services.batch.job_store import JobStore
from services.batch.store import FileStore
from services.ingress.service import IngressService
from services.shared.broker import ensure_streams
from tests.integration.conftest import running_ingress, running_worker
from tests.support.batch import running_batch
from tests.support.natsd import NatsServer

pytestmark = pytest.mark.integration

DEMO, ACME = "sk-skinflint-demo", "sk-skinflint-acme"
LIMIT = 4000


def line(custom_id: str) -> bytes:
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": body}).encode() + b"\n"


INPUT = line("a") + line("b")


class Api:
    """One ingress, an SDK client per tenant and a raw HTTP client for what the SDK cannot send."""

    def __init__(self, service: IngressService, raw: httpx.AsyncClient) -> None:
        base = f"http://127.0.0.1:{service.port}/v1"
        self.service = service
        self.raw = raw
        self.demo = openai.AsyncOpenAI(base_url=base, api_key=DEMO, max_retries=0)
        self.acme = openai.AsyncOpenAI(base_url=base, api_key=ACME, max_retries=0)

    async def upload(self, client: openai.AsyncOpenAI | None = None, data: bytes = INPUT) -> str:
        stored = await (client or self.demo).files.create(file=("in.jsonl", data), purpose="batch")
        return stored.id


@pytest.fixture
async def api(nats_server: NatsServer) -> AsyncIterator[Api]:
    async with running_ingress(nats_server.url, batch_max_file_bytes=LIMIT) as (service, raw):
        yield Api(service, raw)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


async def test_a_file_uploads_lists_downloads_and_deletes(api: Api) -> None:
    created = await api.demo.files.create(file=("in.jsonl", INPUT), purpose="batch")
    assert created.id.startswith("file-") and created.bytes == len(INPUT)
    assert created.purpose == "batch" and created.filename == "in.jsonl" and created.status == "processed"
    assert await api.demo.files.retrieve(created.id) == created
    content = await api.demo.files.content(created.id)
    assert content.content == INPUT

    second = await api.upload()
    listed = [f.id async for f in api.demo.files.list()]
    assert listed.index(second) < listed.index(created.id)  # newest first
    ascending = [f.id async for f in api.demo.files.list(order="asc")]
    assert ascending.index(created.id) < ascending.index(second)
    page = await api.demo.files.list(limit=1, purpose="batch")
    assert page.data[0].id == second and page.has_more
    after = await api.demo.files.list(limit=1, after=second)
    assert after.data[0].id == created.id

    deleted = await api.demo.files.delete(created.id)
    assert deleted.id == created.id and deleted.deleted
    with pytest.raises(openai.NotFoundError) as gone:
        await api.demo.files.retrieve(created.id)
    assert error_of(gone.value)["param"] == "file_id"
    with pytest.raises(openai.NotFoundError):
        await api.demo.files.content(created.id)
    with pytest.raises(openai.NotFoundError):
        await api.demo.files.delete(created.id)
    assert created.id not in [f.id async for f in api.demo.files.list()]


async def test_an_upload_may_expire_after_a_while(api: Api) -> None:
    before = int(time.time())
    stored = await api.demo.files.create(file=("in.jsonl", INPUT), purpose="batch",
                                         expires_after={"anchor": "created_at", "seconds": 7200})
    assert stored.expires_at is not None and before + 7200 <= stored.expires_at <= int(time.time()) + 7200
    with pytest.raises(openai.BadRequestError) as bad:
        await api.demo.files.create(file=("in.jsonl", INPUT), purpose="batch",
                                    expires_after={"anchor": "created_at", "seconds": 5})
    assert error_of(bad.value)["param"] == "expires_after[seconds]"


async def test_a_batch_is_created_started_listed_and_cancelled(api: Api, nc: Client) -> None:
    file_id = await api.upload()
    batch = await api.demo.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                          completion_window="24h", metadata={"run": "nightly"})
    assert batch.id.startswith("batch_") and batch.status == "validating"
    assert batch.input_file_id == file_id and batch.metadata == {"run": "nightly"}
    assert batch.expires_at == batch.created_at + 24 * 3600

    # Handed to the batch service: the start message is stored, named by the batch.
    stored = await nc.jetstream().get_last_msg(BATCH_START_STREAM.name, BATCH_START_SUBJECT)
    assert BatchStart.model_validate_json(stored.data or b"") == BatchStart(tenant="demo", batch_id=batch.id)
    assert (stored.headers or {}).get("Nats-Msg-Id") == f"start-{batch.id}"
    job = await (await JobStore.open(nc.jetstream())).get("demo", batch.id)
    assert job.api_key_id == "demo-dev"  # its items are charged to the key that created it

    # The raw Batch object carries skinflint's progress, and the SDK's model still parses it.
    raw = (await api.raw.get(f"/v1/batches/{batch.id}")).json()
    assert raw["skinflint"]["progress"] == {"pending": 0, "per_second": None, "eta_s": None, "elapsed_s": 0.0}
    assert openai.types.Batch.model_validate(raw).id == batch.id
    assert (await api.demo.batches.retrieve(batch.id)).status == "validating"

    # Any whole number of hours up to the configured longest (the SDK's type names only "24h").
    newer = await api.demo.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                          completion_window="4h")  # type: ignore[arg-type]
    assert newer.expires_at == newer.created_at + 4 * 3600
    ids = [b.id async for b in api.demo.batches.list()]
    assert ids.index(newer.id) < ids.index(batch.id)
    page = await api.demo.batches.list(limit=1)
    assert [b.id for b in page.data] == [newer.id] and page.has_more
    assert (await api.demo.batches.list(limit=1, after=newer.id)).data[0].id == batch.id

    cancelling = await api.demo.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    again = await api.demo.batches.cancel(batch.id)  # cancelling twice is harmless
    assert again.status == "cancelling" and again.cancelling_at == cancelling.cancelling_at
    assert (await api.demo.batches.retrieve(batch.id)).status == "cancelling"


@pytest.mark.parametrize("end", ["completed", "failed"])
async def test_a_finished_batch_cannot_be_cancelled(api: Api, nc: Client, end: str) -> None:
    now = time.time()
    job = BatchJob.create(tenant="demo", input_file_id="file-x", now=now)
    if end == "completed":
        job.start(now, 1)
        job.record(0, True, now)
        job.complete(now, None, None)
    else:
        job.fail(now, [FileError(code="empty_file", message="the file has no requests")])
    await (await JobStore.open(nc.jetstream())).create(job)
    with pytest.raises(openai.ConflictError) as conflict:
        await api.demo.batches.cancel(job.id)
    error = error_of(conflict.value)
    assert error["code"] == "invalid_batch_state" and error["param"] == "status" and end in error["message"]
    assert (await api.demo.batches.retrieve(job.id)).status == end


async def test_tenants_never_see_each_others_files_or_batches(api: Api) -> None:
    file_id = await api.upload(api.demo)
    batch = await api.demo.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
    theirs = await api.upload(api.acme)
    for attempt in (api.acme.files.retrieve(file_id), api.acme.files.content(file_id),
                    api.acme.files.delete(file_id), api.acme.batches.retrieve(batch.id),
                    api.acme.batches.cancel(batch.id)):
        with pytest.raises(openai.NotFoundError) as missing:
            await attempt
        assert error_of(missing.value)["code"] == "not_found"
    with pytest.raises(openai.NotFoundError) as missing:  # another tenant's file as a batch's input
        await api.acme.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
    assert error_of(missing.value)["param"] == "input_file_id"
    acme_files = [f.id async for f in api.acme.files.list()]
    acme_batches = [b.id async for b in api.acme.batches.list()]
    assert theirs in acme_files and file_id not in acme_files and batch.id not in acme_batches
    with pytest.raises(openai.BadRequestError) as cursor:  # another tenant's id is no cursor either
        await api.acme.files.list(after=file_id)
    assert error_of(cursor.value)["param"] == "after"
    # ... and demo's things are all still there.
    assert (await api.demo.files.content(file_id)).content == INPUT
    assert (await api.demo.batches.retrieve(batch.id)).status == "validating"


async def test_an_upload_over_the_limit_is_a_413(api: Api) -> None:
    # Under the form's overhead: refused while it streams into the store.
    with pytest.raises(openai.APIStatusError) as streamed:
        await api.demo.files.create(file=("big.jsonl", b"x" * (LIMIT + 1)), purpose="batch")
    # Declared far over the limit: refused from its Content-Length.
    r = await api.raw.post("/v1/files", data={"purpose": "batch"}, files={"file": ("big.jsonl", b"x" * 200_000)})
    for status, body in ((streamed.value.status_code, streamed.value.response.json()), (r.status_code, r.json())):
        assert status == 413, body
        assert body["error"]["code"] == "file_too_large" and body["error"]["param"] == "file"
    # Chunked, with no Content-Length: counted as it arrives.
    async def chunked() -> AsyncIterator[bytes]:
        yield (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--b\r\n'
               b'Content-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n')
        for _ in range(1000):
            yield b"x" * 1000

    r = await api.raw.post("/v1/files", content=chunked(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large", r.text
    exactly = await api.demo.files.create(file=("edge.jsonl", b"x" * LIMIT), purpose="batch")
    assert exactly.bytes == LIMIT


async def test_bad_uploads_are_400s_naming_the_field(api: Api) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await api.demo.files.create(file=("in.jsonl", INPUT), purpose="fine-tune")
    assert error_of(bad.value)["param"] == "purpose"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"json": {"purpose": "batch"}}, "file"),  # not multipart
        ({"content": b"--x\r\nnonsense", "headers": {"content-type": "multipart/form-data; boundary=x"}}, "file"),
        ({"data": {"purpose": "batch"}, "files": {"other": ("a", b"1")}}, "other"),
        ({"files": {"file": ("in.jsonl", INPUT)}}, "purpose"),
        ({"data": {"purpose": "batch"}}, "file"),
        ({"data": {"purpose": "batch", "file": "not a file part"}}, "file"),
        ({"data": {"purpose": "batch"}, "files": [("file", ("a", INPUT)), ("file", ("b", INPUT))]}, "file"),
        ({"data": {"purpose": "batch", "expires_after[anchor]": "now", "expires_after[seconds]": "3600"},
          "files": {"file": ("in.jsonl", INPUT)}}, "expires_after[anchor]"),
        ({"data": {"purpose": "batch", "expires_after[anchor]": "created_at", "expires_after[seconds]": "x"},
          "files": {"file": ("in.jsonl", INPUT)}}, "expires_after[seconds]"),
    ]
    for kwargs, param in cases:
        r = await api.raw.post("/v1/files", **kwargs)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (kwargs, r.text)
    for query, param in (("limit=0", "limit"), ("limit=x", "limit"), ("order=up", "order"),
                         ("purpose=assistants", "purpose"), ("after=file-nope", "after")):
        r = await api.raw.get(f"/v1/files?{query}")
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (query, r.text)
    for path in ("/v1/files/file-nope", "/v1/files/file-nope/content", "/v1/files/..%2F..", "/v1/files/a.b"):
        r = await api.raw.get(path)
        assert r.status_code == 404, (path, r.text)
    assert (await api.raw.post("/v1/files", headers={"authorization": "Bearer nope"})).status_code == 401


async def test_bad_batch_requests_are_4xx_naming_the_field(api: Api, nc: Client) -> None:
    file_id = await api.upload()
    good = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    cases: list[tuple[Any, int, str | None]] = [
        ({**good, "input_file_id": "file-" + uuid.uuid4().hex}, 404, "input_file_id"),
        ({**good, "input_file_id": "no such/id"}, 404, "input_file_id"),
        ({**good, "input_file_id": 7}, 400, "input_file_id"),
        ({k: v for k, v in good.items() if k != "input_file_id"}, 400, "input_file_id"),
        ({**good, "endpoint": "/v1/embeddings"}, 400, "endpoint"),
        ({**good, "completion_window": "2d"}, 400, "completion_window"),
        ({**good, "completion_window": "169h"}, 400, "completion_window"),
        ({**good, "completion_window": 24}, 400, "completion_window"),
        ({k: v for k, v in good.items() if k != "completion_window"}, 400, "completion_window"),
        ({**good, "metadata": "x"}, 400, "metadata"),
        ({**good, "metadata": {"k": 1}}, 400, "metadata.k"),
        ({**good, "metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata"),
        ({**good, "output_expires_after": {"anchor": "created_at", "seconds": 1}}, 400,
         "output_expires_after.seconds"),
        ({**good, "surprise": 1}, 400, "surprise"),
        ([good], 400, None),
    ]
    for body, status, param in cases:
        r = await api.raw.post("/v1/batches", json=body)
        assert r.status_code == status and r.json()["error"]["param"] == param, (body, r.text)
    r = await api.raw.post("/v1/batches", content=b"{not json")
    assert r.status_code == 400, r.text
    for query, param in (("limit=0", "limit"), ("limit=101", "limit"), ("after=batch_nope", "after")):
        r = await api.raw.get(f"/v1/batches?{query}")
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (query, r.text)
    for method, path in (("GET", "/v1/batches/batch_nope"), ("POST", "/v1/batches/batch_nope/cancel"),
                         ("GET", "/v1/batches/a.b.c")):
        r = await api.raw.request(method, path)
        assert r.status_code == 404 and r.json()["error"]["param"] == "batch_id", (path, r.text)
    with pytest.raises(openai.BadRequestError) as long_key:
        await api.demo.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                      completion_window="1h",  # type: ignore[arg-type]
                                      metadata={"k" * 65: "v"})
    assert error_of(long_key.value)["param"] == "metadata"
    # A batch's output file is no input.
    files = await FileStore.open(nc.jetstream(), max_bytes=LIMIT)
    output = await files.put("demo", "out.jsonl", FilePurpose.BATCH_OUTPUT, b"{}\n")
    assert (await api.demo.files.retrieve(output.id)).purpose == "batch_output"
    with pytest.raises(openai.BadRequestError) as not_input:
        await api.demo.batches.create(input_file_id=output.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
    assert error_of(not_input.value)["param"] == "input_file_id"


async def test_a_start_that_cannot_be_published_is_a_503_and_the_job_waits(api: Api, nc: Client) -> None:
    file_id = await api.upload()
    js = nc.jetstream()
    await js.delete_stream(BATCH_START_STREAM.name)
    try:
        with pytest.raises(openai.InternalServerError) as unavailable:
            await api.demo.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
    finally:
        await ensure_streams(api.service.broker, [BATCH_START_STREAM])
    assert unavailable.value.status_code == 503
    message = error_of(unavailable.value)["message"]
    batch_id = message.split()[1]
    assert (await api.demo.batches.retrieve(batch_id)).status == "validating"


async def test_the_sdk_runs_a_batch_end_to_end(fresh_nats_server: NatsServer) -> None:
    """What an OpenAI Batch API user does, unchanged: upload, create, poll, download the output,
    with the batch service and a worker (fake engine) behind ingress."""
    url = fresh_nats_server.url
    data = line("one") + b"{not json\n" + line("two")
    async with running_worker(url), running_batch(url, pipeline=["infer"]), \
            running_ingress(url, pipeline=["infer"]) as (service, raw):
        api = Api(service, raw)
        client = api.demo
        file_id = (await client.files.create(file=("in.jsonl", data), purpose="batch")).id
        batch = await client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                            completion_window="24h")
        for _attempt in range(600):
            batch = await client.batches.retrieve(batch.id)
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                break
            await asyncio.sleep(0.1)
        assert batch.status == "completed", batch
        assert batch.request_counts is not None
        assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (3, 2, 1)
        assert batch.output_file_id and batch.error_file_id
        output = (await client.files.content(batch.output_file_id)).content.splitlines()
        answers = {json.loads(x)["custom_id"]: json.loads(x)["response"] for x in output}
        assert set(answers) == {"one", "two"}
        assert all(a["status_code"] == 200 and a["body"]["object"] == "chat.completion" for a in answers.values())
        errors = [json.loads(x) for x in (await client.files.content(batch.error_file_id)).content.splitlines()]
        assert [e["error"]["code"] for e in errors] == ["invalid_json_line"]
        output_file = await client.files.retrieve(batch.output_file_id)
        assert output_file.purpose == "batch_output" and output_file.expires_at is not None
        progress = (await raw.get(f"/v1/batches/{batch.id}")).json()["skinflint"]["progress"]
        assert progress["pending"] == 0 and progress["eta_s"] == 0
