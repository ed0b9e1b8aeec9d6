"""Where batch jobs and their items' results live: JetStream KV (file storage), so a job
survives a worker crash, an ingress restart and a nats-server restart.

- Jobs (``BATCH_JOBS_BUCKET``): key ``b.<tenant token>.<batch id>``, value the
  :class:`~services.batch.job.BatchJob` JSON plus ``created_ns`` (the order of the list). Reads
  go through the caller's tenant, so another tenant's batch id is a ``NotFound`` like a missing
  one. Every change is :meth:`JobStore.update`: read, apply, write with the revision read
  (optimistic concurrency), again on a conflict.
- Item results (``BATCH_ITEMS_BUCKET``): key ``<batch id>.<item index>``, created once. The
  durability contract: a worker acknowledges an item's message only after :meth:`record_item`
  returned, so a crash before that redelivers it, and a redelivered result finds its key taken
  (``False``): stored once, counted once. After a crash the output file is rebuilt from
  :meth:`items`.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from contracts.subjects import BATCH_ITEMS_BUCKET, BATCH_JOBS_BUCKET
from services.batch.job import BatchJob
from services.batch.store import id_token, key_token, open_kv, scan
from services.shared.errors import BadRequest, NotFound, Unavailable

log = logging.getLogger(__name__)

#: Conflicting writers retry at most this many times; more means something writes in a loop.
MAX_UPDATE_ATTEMPTS = 20


class JobStore:
    """Batch jobs and their items' results. Build with :meth:`open`. Bus failures raise
    nats-py's errors."""

    def __init__(self, jobs: KeyValue, items: KeyValue, js: JetStreamContext, items_bucket: str) -> None:
        self._jobs = jobs
        self._items = items
        self._js = js
        self._items_bucket = items_bucket

    @classmethod
    async def open(cls, js: JetStreamContext, *, jobs_bucket: str = BATCH_JOBS_BUCKET,
                   items_bucket: str = BATCH_ITEMS_BUCKET) -> JobStore:
        """Create both buckets (file storage), or bind the existing ones. Idempotent."""
        return cls(await open_kv(js, jobs_bucket), await open_kv(js, items_bucket), js, items_bucket)

    @staticmethod
    def _key(tenant: str, batch_id: str) -> str:
        return f"b.{key_token(tenant)}.{id_token(batch_id, 'batch_id')}"

    async def create(self, job: BatchJob, now: float | None = None) -> None:
        """Store a new job; a ``ValueError`` when its id is taken (ids are random: a bug)."""
        created_ns = time.time_ns() if now is None else int(now * 1e9)
        try:
            await self._jobs.create(self._key(job.tenant, job.id), _encode(job, created_ns))
        except KeyWrongLastSequenceError:
            raise ValueError(f"batch {job.id} already exists") from None

    async def get(self, tenant: str, batch_id: str) -> BatchJob:
        """``tenant``'s batch ``batch_id``; ``NotFound`` when it has none by that id (another
        tenant's batch included)."""
        return (await self._read(tenant, batch_id))[0]

    async def _read(self, tenant: str, batch_id: str) -> tuple[BatchJob, int, int]:
        try:
            entry = await self._jobs.get(self._key(tenant, batch_id))
        except KeyNotFoundError:
            raise NotFound(f"batch_id: no batch {batch_id[:80]!r}", param="batch_id", code="not_found") from None
        value = entry.value or b""
        return _decode(value), _created_ns(value), entry.revision or 0

    async def update(self, tenant: str, batch_id: str, fn: Callable[[BatchJob], BatchJob | None]) -> BatchJob:
        """Apply ``fn`` to the stored job and store what it returns (or the job it changed in
        place, when it returns None); returns the stored job. A write that another writer beat
        is retried on the newer job, so no update is lost; an exception from ``fn`` (e.g.
        ``WrongState``) stores nothing and propagates. ``fn`` may run more than once: it must
        depend on the job only."""
        for attempt in range(MAX_UPDATE_ATTEMPTS):
            if attempt:  # jittered, so that writers who collided do not collide again in step
                await asyncio.sleep(random.uniform(0, min(0.001 * 2 ** attempt, 0.1)))
            job, created_ns, revision = await self._read(tenant, batch_id)
            changed = fn(job)
            changed = job if changed is None else changed
            if changed.id != batch_id or changed.tenant != tenant:
                raise ValueError("an update must not change a batch's id or tenant")
            try:
                await self._jobs.update(self._key(tenant, batch_id), _encode(changed, created_ns), last=revision)
            except KeyWrongLastSequenceError:
                continue
            return changed
        raise Unavailable(f"batch {batch_id} is being changed by too many writers at once; try again")

    async def list(self, tenant: str, limit: int = 10000, after: str | None = None) -> list[BatchJob]:
        """``tenant``'s batches, newest first (OpenAI's order), at most ``limit``, after the
        batch ``after`` when given (a 400 naming ``after`` when it is not one of ``tenant``'s)."""
        entries = await scan(self._jobs, f"b.{key_token(tenant)}.*")
        ranked = sorted(((_created_ns(e.value or b""), _decode(e.value or b"")) for e in entries),
                        key=lambda pair: (pair[0], pair[1].id), reverse=True)
        jobs = [job for _, job in ranked]
        if after is not None:
            ids = [job.id for job in jobs]
            if after not in ids:
                raise BadRequest(f"after: {after[:80]!r} is not one of your batches", param="after")
            jobs = jobs[ids.index(after) + 1:]
        return jobs[:max(limit, 0)]

    async def every(self) -> builtins.list[BatchJob]:
        """Every tenant's jobs (the batch service's sweeper): one unreadable record is skipped."""
        jobs: builtins.list[BatchJob] = []
        for entry in await scan(self._jobs, "b.>"):
            try:
                jobs.append(_decode(entry.value or b""))
            except ValueError as exc:
                log.warning("batch jobs: skipping record %s: %s", entry.key, exc)
        return jobs

    # -- items -----------------------------------------------------------------------------------

    def _item_key(self, batch_id: str, index: int) -> str:
        if index < 0:
            raise ValueError(f"an item index is never negative, got {index}")
        return f"{id_token(batch_id, 'batch_id')}.{index}"

    async def record_item(self, batch_id: str, index: int, result: bytes) -> bool:
        """Store item ``index``'s result unless one is stored: True the first time only, so a
        redelivered (or concurrently duplicated) result is neither stored nor counted twice."""
        try:
            await self._items.create(self._item_key(batch_id, index), result)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def item(self, batch_id: str, index: int) -> bytes | None:
        """Item ``index``'s stored result, or None when it has none yet."""
        try:
            return (await self._items.get(self._item_key(batch_id, index))).value or b""
        except KeyNotFoundError:
            return None

    async def item_indices(self, batch_id: str) -> builtins.list[int]:
        """The items of ``batch_id`` with a stored result, in index order."""
        entries = await scan(self._items, f"{id_token(batch_id, 'batch_id')}.*", meta_only=True)
        return sorted(int(e.key.rsplit(".", 1)[1]) for e in entries)

    async def items(self, batch_id: str) -> AsyncIterator[tuple[int, bytes]]:
        """Every stored result of ``batch_id`` as ``(index, result)``, in index order: what the
        output and error files are rebuilt from after a crash. Reads one result at a time (the
        keys are listed first), so a large batch never sits whole in memory."""
        for index in await self.item_indices(batch_id):
            result = await self.item(batch_id, index)
            if result is not None:  # purged meanwhile
                yield index, result

    async def purge_items(self, batch_id: str) -> None:
        """Drop every stored result of ``batch_id`` (once its files are written and the job is
        final)."""
        await self._js.purge_stream(f"KV_{self._items_bucket}",
                                    subject=f"$KV.{self._items_bucket}.{id_token(batch_id, 'batch_id')}.>")


def _encode(job: BatchJob, created_ns: int) -> bytes:
    record = job.model_dump(mode="json") | {"created_ns": created_ns}
    return json.dumps(record, separators=(",", ":")).encode()


def _created_ns(value: bytes) -> int:
    try:
        return int(json.loads(value).get("created_ns", 0))
    except (ValueError, TypeError, AttributeError):
        return 0


def _decode(value: bytes) -> BatchJob:
    try:
        return BatchJob.model_validate_json(value)
    except ValidationError as exc:
        raise ValueError(f"batch jobs: an unreadable job record: {exc}") from exc
