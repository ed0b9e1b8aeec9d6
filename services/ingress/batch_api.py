"""OpenAI's Files and Batches API over HTTP (``/v1/files``, ``/v1/batches``), for the caller's
tenant only, so that code written for the ``openai`` SDK (``client.files``, ``client.batches``)
runs unchanged against skinflint.

Every read and write goes through the stores (``services.batch.store.FileStore``,
``services.batch.job_store.JobStore``) by the caller's tenant: another tenant's file or batch id
is the same 404 as a missing one, and never shows in a list. An upload is streamed: its size is
checked from ``Content-Length`` up front and counted as the body arrives, and the file part goes
from the form's spool to the file store chunk by chunk. ``POST /v1/batches`` stores the job
(``validating``), then hands it to the batch service with a ``BatchStart`` on JetStream; when
that publish fails the caller gets a 503 and the job stays ``validating`` (the batch service's
sweeper starts such jobs when it finds them).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from faststream.nats import NatsBroker
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message

from contracts.subjects import BATCH_START_STREAM, BATCH_START_SUBJECT
from contracts.v1 import BatchStart
from services.batch.files import (
    MAX_EXPIRES_AFTER_S,
    MIN_EXPIRES_AFTER_S,
    FilePurpose,
    StoredFile,
    check_upload_purpose,
    output_expiry,
)
from services.batch.job import BatchJob, WrongState
from services.batch.job_store import JobStore
from services.batch.store import FileStore
from services.ingress.body import read_body
from services.ingress.gateway import decode_json
from services.ingress.settings import IngressSettings
from services.ingress.tenants import Gate
from services.shared import lane
from services.shared.broker import ensure_streams
from services.shared.errors import BadRequest, NotFound, PayloadTooLarge, Unavailable

#: Room for a multipart body's boundaries, part headers and small fields around the file itself.
FORM_OVERHEAD_BYTES = 64 * 1024
#: Largest ``POST /v1/batches`` body (a few ids and at most 16 metadata pairs).
MAX_CREATE_BODY_BYTES = 64 * 1024
MAX_FILENAME_CHARS = 255
#: How long ``POST /v1/batches`` waits for JetStream to store the start message.
START_ACK_TIMEOUT_S = 5.0
_READ_CHUNK = 256 * 1024
_FORM_FIELDS = frozenset({"file", "purpose", "expires_after[anchor]", "expires_after[seconds]"})
_CREATE_FIELDS = frozenset({"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"})

_CREATE_SHAPE = ("a JSON object {\"input_file_id\": ..., \"endpoint\": \"/v1/chat/completions\", "
                 "\"completion_window\": \"24h\", \"metadata\": {...}}")

T = TypeVar("T", StoredFile, BatchJob)

_UPLOAD_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"], "properties": {
        "file": {"type": "string", "format": "binary"}, "purpose": {"type": "string", "enum": ["batch"]},
        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
        "expires_after[seconds]": {"type": "integer", "minimum": MIN_EXPIRES_AFTER_S,
                                   "maximum": MAX_EXPIRES_AFTER_S}}}}}}}
_CREATE_SCHEMA = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "additionalProperties": False,
    "required": ["input_file_id", "endpoint", "completion_window"], "properties": {
        "input_file_id": {"type": "string"}, "endpoint": {"type": "string", "enum": ["/v1/chat/completions"]},
        "completion_window": {"type": "string", "example": "24h"},
        "metadata": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
        "output_expires_after": {"type": "object", "properties": {
            "anchor": {"type": "string", "enum": ["created_at"]}, "seconds": {"type": "integer"}}}}}}}}}


class BatchApi:
    """The stores behind the Batch API and the way to the batch service. :meth:`open` runs at
    ingress start (after the broker connected); until then every endpoint answers 503."""

    def __init__(self, broker: NatsBroker, settings: IngressSettings) -> None:
        self._broker = broker
        self.settings = settings
        self._js: JetStreamContext | None = None
        self._files: FileStore | None = None
        self._jobs: JobStore | None = None

    async def open(self) -> None:
        """Create (or bind) the start stream and both stores. Idempotent: every replica calls it."""
        await ensure_streams(self._broker, [BATCH_START_STREAM])
        js = self._broker.connection.jetstream()
        self._files = await FileStore.open(js, max_bytes=self.settings.batch_max_file_bytes)
        self._jobs = await JobStore.open(js)
        self._js = js

    @property
    def files(self) -> FileStore:
        if self._files is None:
            raise Unavailable("the Batch API is starting; try again in a moment")
        return self._files

    @property
    def jobs(self) -> JobStore:
        if self._jobs is None:
            raise Unavailable("the Batch API is starting; try again in a moment")
        return self._jobs

    async def start(self, job: BatchJob) -> None:
        """Hand ``job`` to the batch service; returns once JetStream stored the message. The
        message id makes a repeated start of the same job one message."""
        if self._js is None:
            raise Unavailable("the Batch API is starting; try again in a moment")
        data = BatchStart(tenant=job.tenant, batch_id=job.id).model_dump_json().encode()
        headers = {**(lane.trace_headers() or {}), "Nats-Msg-Id": f"start-{job.id}"}
        try:
            await self._js.publish(BATCH_START_SUBJECT, data, stream=BATCH_START_STREAM.name, headers=headers,
                                   timeout=START_ACK_TIMEOUT_S)
        except (NatsError, TimeoutError, OSError) as exc:
            raise Unavailable(f"batch {job.id} was created but could not be handed to the batch service ({exc!r}); "
                              "it stays 'validating' and starts once the batch service finds it") from exc


@contextlib.contextmanager
def bus_errors() -> Iterator[None]:
    """The bus failing under a store call is a 503 (try again), not an internal error."""
    try:
        yield
    except (NatsError, TimeoutError, OSError) as exc:
        raise Unavailable(f"the batch store did not answer ({exc!r}); try again") from exc


def batch_object(job: BatchJob, now: float) -> dict[str, Any]:
    """OpenAI's Batch object, plus ``skinflint.progress`` (the SDK ignores unknown keys)."""
    progress = job.progress(now)
    return {**job.to_openai(), "skinflint": {"progress": {
        "pending": progress.pending, "per_second": progress.per_second, "eta_s": progress.eta_s,
        "elapsed_s": progress.elapsed_s}}}


def list_page(items: Sequence[dict[str, Any]], limit: int, has_more: bool) -> dict[str, Any]:
    data = list(items[:limit])
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


def after_cursor(items: list[T], after: str | None, what: str) -> list[T]:
    """The items that come after the one whose id is ``after`` (a 400 naming ``after`` when
    there is none: a cursor is an id this list returned)."""
    if after is None:
        return items
    ids = [item.id for item in items]
    if after not in ids:
        raise BadRequest(f"after: {after[:80]!r} is not one of your {what}", param="after")
    return items[ids.index(after) + 1:]


def upload_expiry(form: FormData, created_at: int) -> int | None:
    """``expires_after[anchor]``/``expires_after[seconds]`` (both or neither) as an ``expires_at``."""
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise BadRequest("expires_after[anchor]: the only anchor is \"created_at\"", param="expires_after[anchor]",
                         code="invalid_value")
    text = seconds if isinstance(seconds, str) else ""
    if not text.strip().isdigit() or not MIN_EXPIRES_AFTER_S <= int(text) <= MAX_EXPIRES_AFTER_S:
        raise BadRequest(f"expires_after[seconds]: must be a whole number from {MIN_EXPIRES_AFTER_S} to "
                         f"{MAX_EXPIRES_AFTER_S}", param="expires_after[seconds]", code="invalid_value")
    return created_at + int(text)


async def read_form(request: Request, limit: int) -> FormData:
    """The multipart form, its parts spooled by Starlette (memory, then disk), the body counted
    as it arrives: a 413 naming ``file`` as soon as it passes ``limit`` and the form's overhead."""
    too_large = PayloadTooLarge(f"file: more than {limit} bytes; split it into smaller files", param="file",
                                code="file_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD_BYTES:
        raise too_large
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise BadRequest("file: upload as multipart/form-data with the fields file and purpose", param="file")
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit + FORM_OVERHEAD_BYTES:
                raise too_large
        return message

    try:
        return await Request(request.scope, receive).form(max_files=1, max_fields=len(_FORM_FIELDS))
    except StarletteHTTPException as exc:  # an unreadable multipart body
        raise BadRequest(f"file: the multipart body could not be read: {exc.detail}", param="file") from None


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(_READ_CHUNK):
        yield chunk


def _content_type(stored: StoredFile) -> str:
    if stored.purpose == FilePurpose.BATCH_OUTPUT or stored.filename.endswith(".jsonl"):
        return "application/jsonl"
    return "application/octet-stream"


def batch_router(gate: Gate, api: BatchApi) -> APIRouter:
    """The routes of ``/v1/files`` and ``/v1/batches``."""
    router = APIRouter(tags=["batch"])

    async def live_file(tenant: str, file_id: str) -> StoredFile:
        """The tenant's file; one past its ``expires_at`` (not swept yet) is gone already."""
        with bus_errors():
            stored = await api.files.get(tenant, file_id)
        if stored.expired(time.time()):
            raise NotFound(f"file_id: no file {file_id[:80]!r} (it expired)", param="file_id", code="not_found")
        return stored

    @router.post("/v1/files", summary="Upload a batch input file (multipart: file, purpose=batch)",
                 openapi_extra=_UPLOAD_SCHEMA)
    async def upload_file(request: Request) -> dict[str, Any]:
        caller = gate.authenticate(request.headers.get("authorization"))
        store = api.files
        form = await read_form(request, store.max_bytes)
        try:
            unknown = sorted(set(form.keys()) - _FORM_FIELDS)
            if unknown:
                raise BadRequest(f"{unknown[0][:80]}: unknown field; send file, purpose and optionally "
                                 "expires_after[anchor] and expires_after[seconds]", param=unknown[0][:80])
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise BadRequest("file: missing; send the JSONL file as the multipart part 'file'", param="file",
                                 code="missing_required_parameter")
            if "purpose" not in form:
                raise BadRequest("purpose: missing; it must be \"batch\"", param="purpose",
                                 code="missing_required_parameter")
            purpose = check_upload_purpose(form.get("purpose"))
            filename = upload.filename or "upload.jsonl"
            if len(filename) > MAX_FILENAME_CHARS:
                raise BadRequest(f"file: the file name is longer than {MAX_FILENAME_CHARS} characters", param="file")
            now = time.time()
            expires_at = upload_expiry(form, int(now))
            with bus_errors():
                stored = await store.put(caller.tenant, filename, purpose, _chunks(upload), expires_at, now=now)
        finally:
            await form.close()
        return stored.to_openai()

    @router.get("/v1/files", summary="List your files, newest first")
    async def list_files(request: Request,
                         purpose: Annotated[str | None, Query(max_length=64)] = None,
                         limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
                         after: Annotated[str | None, Query(max_length=200)] = None,
                         order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc") -> dict[str, Any]:
        caller = gate.authenticate(request.headers.get("authorization"))
        wanted = None
        if purpose is not None:
            if purpose not in {p.value for p in FilePurpose}:
                raise BadRequest(f"purpose: skinflint stores files of purpose \"batch\" and \"batch_output\" only, "
                                 f"not {purpose!r}", param="purpose", code="invalid_value")
            wanted = FilePurpose(purpose)
        now = time.time()
        with bus_errors():
            listed = await api.files.list(caller.tenant, wanted, limit=2 ** 62)
        files = [f for f in listed if not f.expired(now)]
        if order == "asc":
            files.reverse()
        files = after_cursor(files, after, "files")
        return list_page([f.to_openai() for f in files[:limit + 1]], limit, len(files) > limit)

    @router.get("/v1/files/{file_id}", summary="Describe one of your files")
    async def get_file(request: Request, file_id: str) -> dict[str, Any]:
        caller = gate.authenticate(request.headers.get("authorization"))
        return (await live_file(caller.tenant, file_id)).to_openai()

    @router.get("/v1/files/{file_id}/content", summary="Download one of your files")
    async def file_content(request: Request, file_id: str) -> StreamingResponse:
        caller = gate.authenticate(request.headers.get("authorization"))
        stored = await live_file(caller.tenant, file_id)
        with bus_errors():
            chunks = await api.files.content(caller.tenant, file_id)
        return StreamingResponse(chunks, media_type=_content_type(stored),
                                 headers={"content-length": str(stored.bytes)})

    @router.delete("/v1/files/{file_id}", summary="Delete one of your files")
    async def delete_file(request: Request, file_id: str) -> dict[str, Any]:
        caller = gate.authenticate(request.headers.get("authorization"))
        with bus_errors():
            await api.files.delete(caller.tenant, file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    @router.post("/v1/batches", summary="Create a batch from an uploaded input file", openapi_extra=_CREATE_SCHEMA)
    async def create_batch(request: Request) -> dict[str, Any]:
        caller = gate.authenticate(request.headers.get("authorization"))
        raw = await read_body(request, MAX_CREATE_BODY_BYTES)
        if not raw.strip():
            raise BadRequest(f"the request body is empty; send {_CREATE_SHAPE}")
        body = decode_json(raw)
        now = time.time()
        job = new_job(caller.tenant, body, now, api.settings.batch_max_window_hours, caller.key_id)
        try:
            stored = await live_file(caller.tenant, job.input_file_id)
        except NotFound:
            raise NotFound(f"input_file_id: you have no file {job.input_file_id[:80]!r}", param="input_file_id",
                           code="not_found") from None
        if stored.purpose != FilePurpose.BATCH:
            raise BadRequest(f"input_file_id: {stored.id} has purpose {stored.purpose.value!r}; a batch reads a "
                             "file uploaded with purpose \"batch\"", param="input_file_id", code="invalid_value")
        with bus_errors():
            await api.jobs.create(job, now)
        await api.start(job)
        return batch_object(job, now)

    @router.get("/v1/batches", summary="List your batches, newest first")
    async def list_batches(request: Request, limit: Annotated[int, Query(ge=1, le=100)] = 20,
                           after: Annotated[str | None, Query(max_length=200)] = None) -> dict[str, Any]:
        caller = gate.authenticate(request.headers.get("authorization"))
        with bus_errors():
            jobs = await api.jobs.list(caller.tenant, limit=limit + 1, after=after)
        now = time.time()
        return list_page([batch_object(job, now) for job in jobs], limit, len(jobs) > limit)

    @router.get("/v1/batches/{batch_id}", summary="Describe one of your batches, with its progress")
    async def get_batch(request: Request, batch_id: str) -> dict[str, Any]:
        caller = gate.authenticate(request.headers.get("authorization"))
        with bus_errors():
            job = await api.jobs.get(caller.tenant, batch_id)
        return batch_object(job, time.time())

    @router.post("/v1/batches/{batch_id}/cancel", summary="Cancel one of your batches (finished requests are kept)")
    async def cancel_batch(request: Request, batch_id: str) -> dict[str, Any]:
        caller = gate.authenticate(request.headers.get("authorization"))
        now = time.time()
        try:
            with bus_errors():
                job = await api.jobs.update(caller.tenant, batch_id, lambda job: job.cancel(now))
        except WrongState as exc:
            raise WrongState(exc.message, param="status") from None
        return batch_object(job, now)

    return router


def new_job(tenant: str, body: Any, now: float, max_window_hours: int, api_key_id: str = "") -> BatchJob:
    """The job a ``POST /v1/batches`` body asks for (not stored yet), created with the key
    ``api_key_id`` (its items are charged to it): 400s naming the field."""
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be {_CREATE_SHAPE}")
    unknown = sorted(set(body) - _CREATE_FIELDS)
    if unknown:
        raise BadRequest(f"{unknown[0][:80]}: unknown field", param=unknown[0][:80], code="unknown_parameter")
    for name in ("input_file_id", "endpoint", "completion_window"):
        if name not in body:
            raise BadRequest(f"{name}: missing", param=name, code="missing_required_parameter")
        if not isinstance(body[name], str) or not body[name]:
            raise BadRequest(f"{name}: must be a non-empty string", param=name, code="invalid_type")
    keep_s = None
    if body.get("output_expires_after") is not None:
        keep_s = output_expiry(0, body["output_expires_after"], 0)
    job = BatchJob.create(tenant=tenant, input_file_id=body["input_file_id"], now=now, endpoint=body["endpoint"],
                          completion_window=body["completion_window"], metadata=body.get("metadata"),
                          max_window_hours=max_window_hours)
    job.api_key_id, job.output_expires_after_s = api_key_id, keep_s
    return job
