"""Starting a job: its input checked, its lines that cannot be read failed, its requests queued.

Both entry points end here: ingress's ``BatchStart`` names a job created over HTTP; a tenant's bus
end message first turns the job's lines into its input file (``intake``) and creates the job.
Everything is idempotent: a start message redelivered after a crash queues again what the work
stream may have lost, and the stream drops the copies it holds (``Nats-Msg-Id``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext
from opentelemetry import trace
from pydantic import ValidationError

from contracts.subjects import ITEM_INDEX_HEADER, batch_work_subject
from contracts.v1 import BulkEnd, BulkLine, bus_batch_id
from services.batch import intake
from services.batch.job import BatchJob, BatchStatus, FileError
from services.batch.job_store import JobStore
from services.batch.lines import FileRejected, FileTooLarge, InputLimits, LineError, LineItem, LineResult
from services.batch.output import item_request_id
from services.batch.settings import BatchSettings
from services.batch.store import FileStore
from services.ingress.tenants import TenantConfig
from services.shared import metrics
from services.shared.errors import NotFound, SkinflintError

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


def subject_tokens(subject: str, first: int, count: int) -> list[str] | None:
    """Tokens ``first`` .. ``first + count - 1`` of ``subject`` (None when it is shorter)."""
    parts = subject.split(".")
    return parts[first:first + count] if len(parts) >= first + count else None


async def call(fn: Callable[[], object]) -> None:
    """Call ``fn``, awaiting what it returns if it is awaitable; a failure is logged, not raised."""
    try:
        result = fn()
        if isinstance(result, Awaitable):
            await result
    except Exception:
        log.warning("a best-effort call failed", exc_info=True)


class JobStarter:
    """Starts jobs (``start_job``) and turns bus jobs into batches (``on_bus_end``). ``close``:
    what ends a job every line of which was refused."""

    def __init__(self, settings: BatchSettings, tenants: dict[str, TenantConfig], js: JetStreamContext,
                 files: FileStore, jobs: JobStore, close: Callable[[str, str], Awaitable[None]]) -> None:
        self.settings = settings
        self.tenants = tenants
        self.js = js
        self.files = files
        self.jobs = jobs
        self._close = close
        self.limits = InputLimits(max_bytes=settings.batch_max_file_bytes, max_requests=settings.batch_max_lines)

    async def start_job(self, tenant: str, batch_id: str, keepalive: Callable[[], object] | None = None) -> None:
        """Check the job's input, move it to ``in_progress`` and queue its items; again after a
        crash, queue what the work stream may not hold (it drops the copies it holds)."""
        with tracer.start_as_current_span("batch start", attributes={"sf.batch.id": batch_id, "sf.tenant": tenant}):
            job = await self.jobs.get(tenant, batch_id)
            if job.status not in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS):
                return
            try:
                items = await intake.read_items(self.files, tenant, job.input_file_id, self.limits)
            except NotFound:
                await self._fail(job, FileError(code="invalid_file", param="input_file_id",
                                                message=f"input_file_id: the file {job.input_file_id!r} is gone"))
                return
            except (FileRejected, FileTooLarge) as err:
                await self._fail(job, FileError(code=err.code, message=err.message))
                return
            if job.status is BatchStatus.VALIDATING:
                job = await self.jobs.update(tenant, batch_id, _started(items, time.time()))
                unread = sum(isinstance(i, LineError) for i in items)
                metrics.BATCH_ITEMS.labels("unread").inc(unread)
                log.info("batch %s of %r: %d requests (%d refused on reading)", batch_id, tenant, len(items), unread)
            if job.status is BatchStatus.FINALIZING:
                await self._close(tenant, batch_id)  # every line was refused
                return
            if job.status is not BatchStatus.IN_PROGRESS:
                return
            subject = batch_work_subject(tenant, batch_id)
            for n, item in enumerate(i for i in items if isinstance(i, LineItem)):
                if item.index in job.completed or item.index in job.failed:
                    continue
                line = BulkLine(custom_id=item.custom_id,
                                body=item.request.model_dump(mode="json", exclude_unset=True))
                await self.js.publish(subject, line.model_dump_json().encode(), headers={
                    "Nats-Msg-Id": item_request_id(batch_id, item.index), ITEM_INDEX_HEADER: str(item.index)})
                if keepalive is not None and n % 500 == 499:
                    await call(keepalive)

    async def _fail(self, job: BatchJob, error: FileError) -> None:
        def fail(j: BatchJob) -> None:
            if j.status is BatchStatus.VALIDATING:
                j.fail(time.time(), [error])

        await self.jobs.update(job.tenant, job.id, fail)
        metrics.BATCH_JOBS.labels(BatchStatus.FAILED.value).inc()
        log.info("batch %s of %r failed: %s", job.id, job.tenant, error.message)

    # -- the bus entry point -----------------------------------------------------------------------

    async def on_bus_end(self, subject: str, data: bytes, stream_seq: int,
                         keepalive: Callable[[], object] | None = None) -> None:
        """A tenant's end message: its lines become the job's input file, then the job starts."""
        tokens = subject_tokens(subject, 4, 2)
        if tokens is None:
            return
        tenant, job_name = tokens
        batch_id = bus_batch_id(tenant, job_name)
        try:
            await self.jobs.get(tenant, batch_id)
        except NotFound:
            await self._create_bus_job(tenant, job_name, batch_id, data, stream_seq)
        await self.start_job(tenant, batch_id, keepalive)

    async def _create_bus_job(self, tenant: str, job_name: str, batch_id: str, data: bytes, stream_seq: int) -> None:
        now = time.time()
        lines = await intake.read_bus_lines(self.js, tenant, job_name, stream_seq)
        file_id = await intake.write_bus_input(self.files, tenant, job_name, batch_id, lines)
        problem: FileError | None = None
        end: BulkEnd | None = None
        try:
            end = BulkEnd.model_validate_json(data)
        except ValidationError as exc:
            problem = FileError(code="invalid_end_message", message=f"the end message is not a BulkEnd: {exc}")
        try:
            job = BatchJob.create(
                tenant=tenant, input_file_id=file_id, now=now, batch_id=batch_id,
                completion_window=end.completion_window if end else "24h", metadata=end.metadata if end else None,
                max_window_hours=self.settings.batch_max_window_hours)
        except SkinflintError as err:
            job = BatchJob.create(tenant=tenant, input_file_id=file_id, now=now, batch_id=batch_id)
            problem = problem or FileError(code=err.code, message=err.message, param=err.param)
        job.bus_job = job_name
        if problem is None and end is not None and end.lines != len(lines.lines):
            problem = FileError(code="line_count_mismatch", message=(
                f"the end message says {end.lines} lines, but {len(lines.lines)} were published for job "
                f"{job_name!r} before it; publish every line (each once: give it a Nats-Msg-Id), then the end"))
        if problem is None and tenant not in self.tenants:
            problem = FileError(code="unknown_tenant", message=f"tenant {tenant!r} is not in the tenants file")
        if problem is not None:
            job.fail(now, [problem])
            metrics.BATCH_JOBS.labels(BatchStatus.FAILED.value).inc()
        try:
            await self.jobs.create(job, now)
        except ValueError:
            return  # another replica created it meanwhile
        log.info("bus job %r of %r is batch %s (%d lines)", job_name, tenant, batch_id, len(lines.lines))


def _started(items: list[LineResult], now: float) -> Callable[[BatchJob], None]:
    model = next((i.request.model for i in items if isinstance(i, LineItem)), None)

    def start(job: BatchJob) -> None:
        if job.status is BatchStatus.VALIDATING:
            job.start(now, len(items))
            job.model = model
            for item in items:
                if isinstance(item, LineError):
                    job.record_unread(item.index, now)

    return start
