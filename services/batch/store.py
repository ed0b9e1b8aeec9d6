"""Where the Batch API's files live: JetStream, so a file survives a worker crash, an ingress
restart and a nats-server restart (every bucket uses file storage).

- Bytes: one object per file in an Object Store bucket (``BATCH_FILES_BUCKET``), named
  ``<tenant token>/<file id>``.
- Records: a KV bucket (``BATCH_FILE_META_BUCKET``), key ``f.<tenant token>.<file id>``, value
  the :class:`~services.batch.files.StoredFile` JSON plus ``created_ns`` (the order of the list).

Tenant isolation: every read and delete goes through the key built from the caller's tenant, so
another tenant's file id names a key that does not exist and gets the very ``NotFound`` a missing
id gets. Tenants are escaped into one key token (:func:`key_token`), so ``acme.eu`` never falls
under ``acme``'s keys.

Write order: the object, then the record (create-only); a file is visible once its record exists.
Delete order: the record, then the object. A crash between the two steps leaves an object without
a record: invisible to every tenant, it only costs space (no collector yet).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import IO, Any, cast

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from pydantic import ValidationError

from contracts.subjects import BATCH_FILE_META_BUCKET, BATCH_FILES_BUCKET
from services.batch.files import FilePurpose, StoredFile, new_file_id
from services.shared.errors import BadRequest, NotFound, PayloadTooLarge

log = logging.getLogger(__name__)

#: Error code nats-server answers a stream create with when the stream exists, configured otherwise.
_STREAM_NAME_IN_USE = 10058
_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
#: A scan's marker that came before any entry: how long entries on their way behind it may take.
_EARLY_MARKER_WAIT_S = 0.25
#: The longest wait for the next entry of a scan.
_SCAN_TIMEOUT_S = 10.0
#: Uploads above this spill from memory to a temporary file while they are counted.
_SPOOL_IN_MEMORY = 8 * 1024 * 1024
_READ_CHUNK = 256 * 1024


def key_token(name: str, what: str = "tenant") -> str:
    """``name`` as one KV key token: bytes outside ``[A-Za-z0-9_-]`` become ``=XX`` (``=``
    included, so two names never share a token)."""
    if not name:
        raise ValueError(f"{what} must not be empty")
    return "".join(chr(b) if b in _PLAIN else f"={b:02X}" for b in name.encode())


def id_token(value: str, what: str) -> str:
    """A file or batch id as given by a caller: one plain token, else nothing can match it."""
    if not value or any(b not in _PLAIN for b in value.encode()):
        raise NotFound(f"{what} {value[:80]!r} does not exist", param=what, code="not_found")
    return value


async def open_kv(js: JetStreamContext, bucket: str, history: int = 1) -> KeyValue:
    """Create the KV bucket (file storage), or bind it when it exists. Idempotent: every replica
    calls it at start-up."""
    try:
        return await js.create_key_value(KeyValueConfig(bucket=bucket, history=history, storage=StorageType.FILE))
    except BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise
        return await js.key_value(bucket)


async def scan(kv: KeyValue, pattern: str, *, meta_only: bool = False) -> list[Any]:
    """The live entries (deleted keys left out) whose key matches ``pattern``, in stream order.
    The filter is the server's (nats-py's ``keys(filters=...)`` matches substrings client-side).

    nats-py's "nothing more" marker (None) can come *before* entries already on their way: it
    compares the server's pending count with what its callback has handled, and the server counts
    a message as delivered once sent. So the entries' own pending count (``delta``) decides: read
    until one has none pending; a marker that comes first waits briefly for entries behind it."""
    watcher = await kv.watch(pattern, ignore_deletes=True, meta_only=meta_only)
    entries: list[Any] = []
    early = False
    try:
        while True:
            try:
                entry = await watcher.updates(timeout=_EARLY_MARKER_WAIT_S if early else _SCAN_TIMEOUT_S)
            except NatsTimeoutError:
                if early:
                    break
                raise
            if entry is None:
                if entries:
                    break
                early = True
                continue
            entries.append(entry)
            if entry.delta == 0:
                break
    finally:
        await watcher.stop()
    return entries


class FileStore:
    """A tenant's batch files. Build with :meth:`open`. Bus failures raise nats-py's errors."""

    def __init__(self, objects: ObjectStore, records: KeyValue, max_bytes: int) -> None:
        self._objects = objects
        self._records = records
        self.max_bytes = max_bytes

    @classmethod
    async def open(cls, js: JetStreamContext, *, max_bytes: int, files_bucket: str = BATCH_FILES_BUCKET,
                   records_bucket: str = BATCH_FILE_META_BUCKET) -> FileStore:
        """Create both buckets (file storage), or bind the existing ones. Idempotent."""
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        try:
            objects = await js.create_object_store(files_bucket, ObjectStoreConfig(storage=StorageType.FILE))
        except BadRequestError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
            objects = await js.object_store(files_bucket)
        return cls(objects, await open_kv(js, records_bucket), max_bytes)

    @staticmethod
    def _key(tenant: str, file_id: str) -> str:
        return f"f.{key_token(tenant)}.{id_token(file_id, 'file_id')}"

    @staticmethod
    def _object(tenant: str, file_id: str) -> str:
        return f"{key_token(tenant)}/{file_id}"

    async def put(self, tenant: str, filename: str, purpose: FilePurpose, data: bytes | AsyncIterable[bytes],
                  expires_at: int | None = None, *, requests: int | None = None,
                  now: float | None = None, file_id: str | None = None) -> StoredFile:
        """Store a new file of ``tenant``; returns its record (id ``file-<random>``).

        More than ``max_bytes`` raises ``PayloadTooLarge`` as soon as the count passes the limit,
        and nothing is stored. Chunks are counted into a spool (memory up to 8 MiB, then a
        temporary file), so a large upload never sits whole in memory.

        ``file_id``: a given id (a batch's output file), written once: when a file of ``tenant``
        has that id already, it is returned unchanged, so writing it again after a crash is harmless."""
        key_token(tenant)
        if file_id is not None:
            try:
                return await self.get(tenant, file_id)
            except NotFound:
                pass
        created = time.time() if now is None else now
        stored = StoredFile(id=file_id or new_file_id(), tenant=tenant, filename=filename, purpose=purpose, bytes=0,
                            created_at=int(created), expires_at=expires_at, requests=requests)
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
            if isinstance(data, bytes | bytearray):
                self._check_size(len(data))
                spool.write(data)
            else:
                async for chunk in data:
                    stored.bytes += len(chunk)
                    self._check_size(stored.bytes)
                    spool.write(chunk)
            stored.bytes = spool.tell()
            spool.seek(0)
            # nats-py reads anything with ``readinto`` (in an executor); its annotation says BufferedIOBase.
            await self._objects.put(self._object(tenant, stored.id), cast(Any, spool))
        record = stored.model_dump(mode="json") | {"created_ns": int(created * 1e9)}
        try:
            await self._records.create(self._key(tenant, stored.id), _json(record))
        except KeyWrongLastSequenceError:
            if file_id is None:
                raise
            return await self.get(tenant, file_id)  # written meanwhile by another replica: same bytes
        except BaseException:
            await self._objects.delete(self._object(tenant, stored.id))
            raise
        return stored

    def _check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise PayloadTooLarge(f"file: more than {self.max_bytes} bytes; split it into smaller files",
                                  param="file", code="file_too_large")

    async def get(self, tenant: str, file_id: str) -> StoredFile:
        """``tenant``'s file ``file_id``; ``NotFound`` when it has none by that id (another
        tenant's file included)."""
        try:
            entry = await self._records.get(self._key(tenant, file_id))
        except KeyNotFoundError:
            raise _missing(file_id) from None
        return _decode_file(entry.value)

    async def content(self, tenant: str, file_id: str) -> AsyncIterator[bytes]:
        """The bytes of ``tenant``'s file ``file_id``, in chunks. ``NotFound`` (raised before the
        first chunk) as :meth:`get`; the object's SHA-256 is checked by nats-py."""
        await self.get(tenant, file_id)
        # Not a ``with``: the spool is handed to the iterator returned, which closes it.
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
        try:
            # ``writeinto``: nats-py's in-memory result grows by concatenation (quadratic).
            await self._objects.get(self._object(tenant, file_id), writeinto=cast(Any, spool))
        except NotFoundError:
            spool.close()
            raise _missing(file_id) from None
        spool.seek(0)
        return _chunks(spool)

    async def read(self, tenant: str, file_id: str) -> bytes:
        """The whole content at once (small files: tests, the input file's scan)."""
        return b"".join([chunk async for chunk in await self.content(tenant, file_id)])

    async def delete(self, tenant: str, file_id: str) -> None:
        """Delete ``tenant``'s file ``file_id``; ``NotFound`` as :meth:`get`."""
        await self.get(tenant, file_id)
        await self._records.delete(self._key(tenant, file_id))
        try:
            await self._objects.delete(self._object(tenant, file_id))
        except NotFoundError:
            log.warning("batch files: file %s of %r had a record but no object", file_id, tenant)

    async def list(self, tenant: str, purpose: FilePurpose | None = None, limit: int = 10000,
                   after: str | None = None) -> list[StoredFile]:
        """``tenant``'s files, newest first (OpenAI's order), at most ``limit``; with ``after``
        (a file id of the previous page), those that come after it. An ``after`` that names no
        file of ``tenant`` is a 400 naming ``after``."""
        entries = await scan(self._records, f"f.{key_token(tenant)}.*")
        ranked = sorted(((_created_ns(e.value), f) for e in entries if (f := _readable(e)) is not None),
                        key=lambda pair: (pair[0], pair[1].id), reverse=True)
        files = [f for _, f in ranked if purpose is None or f.purpose == purpose]
        if after is not None:
            ids = [f.id for f in files]
            if after not in ids:
                raise BadRequest(f"after: {after[:80]!r} is not one of your files", param="after")
            files = files[ids.index(after) + 1:]
        return files[:max(limit, 0)]

    async def sweep_expired(self, now: float) -> int:
        """Delete every tenant's files whose ``expires_at`` has passed; returns how many."""
        swept = 0
        for entry in await scan(self._records, "f.>"):
            stored = _readable(entry)
            if stored is not None and stored.expired(now):
                try:
                    await self.delete(stored.tenant, stored.id)
                except NotFound:
                    continue  # deleted meanwhile
                swept += 1
        return swept


def _json(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def _created_ns(value: bytes | None) -> int:
    try:
        return int(json.loads(value or b"{}").get("created_ns", 0))
    except (ValueError, TypeError, AttributeError):
        return 0


def _decode_file(value: bytes | None) -> StoredFile:
    try:
        return StoredFile.model_validate_json(value or b"")
    except ValidationError as exc:
        raise ValueError(f"batch files: an unreadable file record: {exc}") from exc


def _readable(entry: Any) -> StoredFile | None:
    """A listed record, or None (logged) when it cannot be read: one bad record hides no other."""
    try:
        return _decode_file(entry.value)
    except ValueError as exc:
        log.warning("batch files: skipping record %s: %s", entry.key, exc)
        return None


def _missing(file_id: str) -> NotFound:
    return NotFound(f"file_id: no file {file_id[:80]!r}", param="file_id", code="not_found")


async def _chunks(spool: IO[bytes]) -> AsyncIterator[bytes]:
    with spool:
        while chunk := spool.read(_READ_CHUNK):
            yield chunk
