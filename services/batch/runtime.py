"""What the batch service does with each item: hand it to the stages, store its result once, and
close its job with the files when it was the last (starting a job: ``services.batch.starter``).

Every step reads and writes only the stores (``FileStore``, ``JobStore``) and JetStream, so any
replica can pick up where a crashed one stopped: a message is acknowledged only once what it
asked for is stored, and every write is idempotent (deterministic ids, create-only results,
job updates that depend only on the job).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace
from pydantic import ValidationError

from contracts.subjects import (
    ITEM_INDEX_HEADER,
    Priority,
    batch_result_subject,
    public_bulk_output_subject,
)
from contracts.v1 import (
    REPLY_ADAPTER,
    BulkLine,
    ChatRequest,
    ErrorReply,
    Final,
    TaskEnvelope,
)
from services.batch import finalize, intake
from services.batch.job import BatchJob, BatchStatus, WrongState
from services.batch.job_store import JobStore
from services.batch.lines import LineResult
from services.batch.output import Unrun, from_reply, item_request_id
from services.batch.settings import BatchSettings
from services.batch.starter import JobStarter, call, subject_tokens
from services.batch.store import FileStore
from services.ingress.cache_control import default as cache_defaults
from services.ingress.gateway import route_request
from services.ingress.tenants import TenantConfig
from services.shared import metrics
from services.shared.errors import NotFound, SkinflintError, Timeout, Unavailable, is_transient
from services.shared.slip import StageHop
from services.shared.tiers import TiersFile

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

#: A job read for the work handler is reused this long (a cancel is seen within it).
_JOB_TTL_S = 1.0
#: How often an item waiting for its result checks the store (a result another replica stored).
_RESULT_POLL_S = 10.0
#: An item met with "not now" (no stream to queue it in, a timeout) is handed on again after this
#: long, up to this many times; then that answer stands as its result.
_TRANSIENT_RETRY_S = 5.0
_MAX_TRANSIENT_ATTEMPTS = 20


class BatchRuntime:
    """The handlers of the batch service's four inputs and its sweeper (``BatchService`` wires
    them to durable consumers)."""

    def __init__(self, settings: BatchSettings, tiers: TiersFile, tenants: dict[str, TenantConfig],
                 js: JetStreamContext, files: FileStore, jobs: JobStore, hop: StageHop,
                 publish: Callable[[str, bytes], object]) -> None:
        self.settings = settings
        self.tiers = tiers
        self.tenants = tenants
        self.js = js
        self.files = files
        self.jobs = jobs
        self.hop = hop
        #: Core publish (live output lines of bus jobs).
        self._publish = publish
        self.starter = JobStarter(settings, tenants, js, files, jobs, self.close)
        self._jobs_seen: dict[tuple[str, str], tuple[float, BatchJob]] = {}
        #: Items this replica handed on, waiting for their result: request id -> (reply, created).
        self._waiters: dict[str, asyncio.Future[tuple[Final | ErrorReply, int]]] = {}
        self.in_flight: collections.Counter[str] = collections.Counter()
        self._closing: set[str] = set()

    # -- items -------------------------------------------------------------------------------------

    async def _job(self, tenant: str, batch_id: str) -> BatchJob:
        key = (tenant, batch_id)
        seen = self._jobs_seen.get(key)
        now = time.monotonic()
        if seen is not None and now - seen[0] < _JOB_TTL_S:
            return seen[1]
        job = await self.jobs.get(tenant, batch_id)
        self._jobs_seen[key] = (now, job)
        if len(self._jobs_seen) > 1024:
            self._jobs_seen = {k: v for k, v in self._jobs_seen.items() if now - v[0] < _JOB_TTL_S}
        return job

    def envelope(self, job: BatchJob, index: int, request: ChatRequest) -> TaskEnvelope:
        """Item ``index`` as a bulk task: routed and cached as the tenant's chat requests are."""
        tenant = self.tenants.get(job.tenant)
        config = tenant or TenantConfig(name=job.tenant, keys=[{"id": "none", "sha256": "0" * 64}])
        route = route_request(self.tiers, self.settings.pipeline, request, config.routing)
        now = time.time()
        return TaskEnvelope(
            request_id=item_request_id(job.id, index), tenant=job.tenant, api_key_id=job.api_key_id,
            priority=Priority.BULK, request=request, route=route,
            reply_subject=batch_result_subject(job.tenant, job.id),
            itinerary=[s for s in self.settings.pipeline if s != "classifier" or route.routed],
            deadline_at=float(job.expires_at), received_at=now, optional=list(self.settings.optional_stages),
            cache_control=cache_defaults(config.cache), job_id=job.id)

    async def on_work(self, msg: Msg) -> None:
        """One queued item: run it unless its job stopped, and acknowledge once its result is stored."""
        tokens = subject_tokens(msg.subject, 4, 2)
        try:
            index = int((msg.headers or {}).get(ITEM_INDEX_HEADER, ""))
        except ValueError:
            index = -1
        if tokens is None or index < 0:
            log.error("dropping a work message without its job or index on %s", msg.subject)
            await msg.term()
            return
        tenant, batch_id = tokens
        try:
            job = await self._job(tenant, batch_id)
        except NotFound:
            await msg.ack()
            return
        if (index in job.completed or index in job.failed or job.status is not BatchStatus.IN_PROGRESS
                or job.due(time.time()) or await self.jobs.item(batch_id, index) is not None):
            await msg.ack()  # done already, or never to run (cancelled, expired): closing lists it unrun
            return
        line = BulkLine.model_validate_json(msg.data)
        request_id = item_request_id(batch_id, index)
        waiter = self._waiters.get(request_id)
        again = waiter is not None or (msg.metadata.num_delivered or 1) > 1
        if waiter is None:
            waiter = self._waiters[request_id] = asyncio.get_running_loop().create_future()
        self.in_flight[batch_id] += 1
        metrics.BATCH_IN_FLIGHT.inc()
        result: tuple[Final | ErrorReply, int] | None = None
        try:
            result = await self._run(msg, job, index, line, waiter, again)
        finally:
            self.in_flight[batch_id] -= 1
            if self.in_flight[batch_id] <= 0:
                del self.in_flight[batch_id]
            metrics.BATCH_IN_FLIGHT.dec()
            if waiter.done() or result is not None:
                self._waiters.pop(request_id, None)
        if result is not None and job.bus_job is not None:
            reply, created = result
            out = from_reply(batch_id, index, line.custom_id, reply, created)
            await call(lambda: self._publish(public_bulk_output_subject(tenant, job.bus_job or ""),
                                              out.model_dump_json().encode()))

    async def _run(self, msg: Msg, job: BatchJob, index: int, line: BulkLine,
                   waiter: asyncio.Future[tuple[Final | ErrorReply, int]],
                   again: bool) -> tuple[Final | ErrorReply, int] | None:
        request_id = item_request_id(job.id, index)
        try:
            env = self.envelope(job, index, ChatRequest.model_validate(line.body))
            metrics.BATCH_DISPATCHES.labels("again" if again else "first").inc()
            await self.hop.deliver(env)
        except (Unavailable, Timeout) as err:
            log.warning("item %s not handed on (%s); retrying shortly", request_id, err.message)
            await msg.nak(delay=5.0)
            return None
        except SkinflintError as err:  # refused for good (an unknown model): the item's answer
            result = await self.record(job.tenant, job.id, index, err.to_reply(request_id))
            await msg.ack()
            return result
        except ValidationError as exc:
            result = await self.record(job.tenant, job.id, index, ErrorReply(
                request_id=request_id, status=400, code="invalid_request", message=str(exc)[:500]))
            await msg.ack()
            return result
        deadline = time.monotonic() + self.settings.batch_redispatch_after_s
        while True:
            try:
                result = await asyncio.wait_for(asyncio.shield(waiter), timeout=_RESULT_POLL_S)
                break
            except TimeoutError:
                stored = await self.jobs.item(job.id, index)
                if stored is not None:
                    result = finalize.read_record(stored)
                    break
                if time.monotonic() > deadline:
                    log.warning("item %s: no result %.0f s after its hand-off; handing it on again", request_id,
                                self.settings.batch_redispatch_after_s)
                    await msg.nak()
                    return None
                await msg.in_progress()
        reply = result[0]
        if isinstance(reply, ErrorReply) and is_transient(reply):
            if (msg.metadata.num_delivered or 1) < _MAX_TRANSIENT_ATTEMPTS:
                log.warning("item %s: %s; handing it on again shortly", request_id, reply.message)
                await msg.nak(delay=_TRANSIENT_RETRY_S)
                return None
            result = await self.record(job.tenant, job.id, index, reply)
        await msg.ack()
        return result

    # -- results -----------------------------------------------------------------------------------

    async def on_result(self, subject: str, data: bytes) -> None:
        """A bulk task's final reply: stored once, counted once, the job closed when it was the last."""
        tokens = subject_tokens(subject, 4, 2)
        if tokens is None:
            return
        tenant, batch_id = tokens
        try:
            reply = REPLY_ADAPTER.validate_json(data)
        except ValidationError:
            log.error("ignoring an unreadable result on %s", subject)
            return
        if not isinstance(reply, Final | ErrorReply):
            return
        prefix, _, number = reply.request_id.rpartition("-")
        if prefix != batch_id or not number.isdigit():
            log.error("ignoring a result for %s on %s: not an item of that batch", reply.request_id, subject)
            return
        if is_transient(reply):
            # Not an answer: the item is handed on again by whoever holds it (or, held by nobody
            # here, when its work message comes back).
            waiter = self._waiters.get(reply.request_id)
            if waiter is not None and not waiter.done():
                waiter.set_result((reply, 0))
            return
        await self.record(tenant, batch_id, int(number), reply)

    async def record(self, tenant: str, batch_id: str, index: int,
                     reply: Final | ErrorReply) -> tuple[Final | ErrorReply, int]:
        """Store item ``index``'s result (the first one stored stands) and count it in its job."""
        created = int(time.time())
        if not await self.jobs.record_item(batch_id, index, finalize.item_record(reply, created)):
            stored = await self.jobs.item(batch_id, index)
            if stored is not None:
                reply, created = finalize.read_record(stored)
        ok = isinstance(reply, Final)
        usage = reply.usage if isinstance(reply, Final) else None
        changed = False

        def count(job: BatchJob) -> None:
            nonlocal changed
            changed = index < job.total and job.record(index, ok, time.time(), usage)

        try:
            job = await self.jobs.update(tenant, batch_id, count)
        except NotFound:
            job = None
        if changed:
            metrics.BATCH_ITEMS.labels("answered" if ok else "failed").inc()
        waiter = self._waiters.get(item_request_id(batch_id, index))
        if waiter is not None and not waiter.done():
            waiter.set_result((reply, created))
        if job is not None and job.status is BatchStatus.FINALIZING:
            await self.close(tenant, batch_id)
        return reply, created

    # -- closing -----------------------------------------------------------------------------------

    async def close(self, tenant: str, batch_id: str) -> None:
        """Write the files of a job whose items all have an outcome (or that was cancelled and has
        nothing running here, or whose window passed) and end it. Idempotent."""
        if batch_id in self._closing:
            return
        self._closing.add(batch_id)
        try:
            with tracer.start_as_current_span("batch close", attributes={"sf.batch.id": batch_id}):
                await self._close(tenant, batch_id)
        finally:
            self._closing.discard(batch_id)

    async def _close(self, tenant: str, batch_id: str) -> None:
        job = await self.jobs.get(tenant, batch_id)
        now = time.time()
        if job.status is BatchStatus.FINALIZING:
            unrun_as = Unrun.CANCELLED  # none is left unrun
        elif job.status is BatchStatus.CANCELLING:
            unrun_as = Unrun.CANCELLED
        elif job.due(now):
            unrun_as = Unrun.EXPIRED
        else:
            return
        items: list[LineResult] = []
        if job.total:
            items = await intake.read_items(self.files, tenant, job.input_file_id, self.starter.limits)
        recorded = {index: value async for index, value in self.jobs.items(batch_id)}
        built = finalize.build(batch_id, items, recorded, unrun_as)
        expiry_s = job.output_expires_after_s or self.settings.batch_output_expiry_s
        output_id, error_id = await finalize.write(self.files, job, built, now, expiry_s)

        def end(j: BatchJob) -> None:
            for index, value in recorded.items():  # stored, but the job's count was not yet moved
                if j.status in (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING) and index < j.total:
                    reply, _ = finalize.read_record(value)
                    j.record(index, isinstance(reply, Final), now, reply.usage if isinstance(reply, Final) else None)
            if j.status is BatchStatus.FINALIZING:
                j.complete(now, output_id, error_id)
            elif j.status is BatchStatus.CANCELLING:
                j.finish_cancel(now, output_id, error_id)
            else:
                j.expire(now, output_id, error_id)

        try:
            closed = await self.jobs.update(tenant, batch_id, end)
        except WrongState:
            return  # another replica closed it
        unrun = len(closed.unrun)
        metrics.BATCH_ITEMS.labels("unrun").inc(unrun)
        metrics.BATCH_JOBS.labels(closed.status.value).inc()
        log.info("batch %s of %r %s: %d answered, %d failed (%d never ran)", batch_id, tenant,
                 closed.status.value, len(closed.completed), len(closed.failed), unrun)
        await self.jobs.purge_items(batch_id)
        if closed.bus_job is not None:
            await call(lambda: self._publish(public_bulk_output_subject(tenant, closed.bus_job or "") + ".done",
                                              _json(closed.to_openai())))

    def _closable(self, job: BatchJob, now: float) -> bool:
        """Finalizing (a close interrupted), past its window, or cancelled with nothing of it
        running here (a moment after the cancel, for work messages on their way to be dropped)."""
        cancelled = (job.status is BatchStatus.CANCELLING and self.in_flight[job.id] == 0
                     and now - (job.cancelling_at or 0) >= 2)
        return job.status is BatchStatus.FINALIZING or job.due(now) or cancelled

    async def sweep(self) -> None:
        """Jobs that need a push: a lost start, a window passed, a cancel with nothing left running
        here, a close interrupted; and expired files."""
        now = time.time()
        for job in await self.jobs.every():
            try:
                if job.status is BatchStatus.VALIDATING and now - job.created_at >= self.settings.batch_start_retry_s:
                    await self.starter.start_job(job.tenant, job.id)
                elif self._closable(job, now):
                    await self.close(job.tenant, job.id)
            except Exception:
                log.exception("batch %s: the sweep failed; trying again next time", job.id)
        await self.files.sweep_expired(now)


def _json(data: dict[str, object]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()
