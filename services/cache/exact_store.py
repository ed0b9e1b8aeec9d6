"""The exact cache's store: JetStream key-value, one entry per (tenant, exact key), per-entry TTL.

Layout of the bucket (one KV bucket, history 1, every message with its own ``Nats-TTL``):

- ``e.<tenant>.<key>``: the entry (:mod:`services.cache.entry`'s JSON).
- ``i.<tag>.<tenant>.<key>``: an empty tag-index marker, one per tag of the entry, with the
  entry's TTL.

``<tenant>`` and ``<tag>`` are escaped into one subject token (:func:`token`: every byte outside
``[A-Za-z0-9_-]`` as ``=XX``), so a tenant named ``acme.eu`` is one token and invalidating
``acme`` never reaches it. Invalidating a tenant is two subject-filtered purges; no entry of
another tenant is ever read, because the tenant is part of the subject read (and checked again
in the entry).

TTL: nats-server 2.11+ removes a message when its ``Nats-TTL`` runs out (the bucket's stream
has ``allow_msg_ttl``, which nats-py 2.16's ``create_key_value`` always sets); the bucket's max
age is a ceiling for every entry. ``KeyValue.put`` takes no TTL in nats-py 2.16 (only
``create``, which refuses to overwrite), so :meth:`ExactStore.put` publishes to the key's
subject itself with ``msg_ttl``. The header carries whole seconds (nats-py writes
``int(msg_ttl)``), so TTLs are rounded up to at least 1 s; the entry's own ``expires_at`` is
checked on every read as well, so an entry is never served after its TTL even before the server
has removed it.

Stale tag-index markers (their entry expired, was purged, or was overwritten with other tags)
are harmless: invalidating through one purges an entry that is gone or, at worst, an entry that
no longer carries the tag, which costs a miss, never a wrong answer; markers expire with the TTL
of the entry they were written for. A ``put`` racing an invalidation of one of its tags may
survive it (the index is read before the purge); tags name versions (``kb:v3``), so answers
built on the next version carry the next tag.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from typing import Protocol

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BadRequestError, KeyNotFoundError
from nats.js.kv import KeyValue

from contracts.subjects import CACHE_EXACT_BUCKET
from contracts.v1 import ChatRequest
from services.cache.entry import ExactEntry, MalformedEntry, decode, encode
from services.shared import metrics
from services.shared.canonical import exact_key

log = logging.getLogger(__name__)

#: The exact cache's KV bucket.
EXACT_BUCKET = CACHE_EXACT_BUCKET
#: Error code nats-server answers a stream create with when the stream exists, configured otherwise.
_STREAM_NAME_IN_USE = 10058

_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_MAX_TOKEN_CHARS = 256


def token(name: str, what: str = "name") -> str:
    """``name`` as one subject token: bytes outside ``[A-Za-z0-9_-]`` become ``=XX`` (``=``
    included, so the escape is injective: two names never share a token)."""
    if not name:
        raise ValueError(f"{what} must not be empty")
    escaped = "".join(chr(b) if b in _PLAIN else f"={b:02X}" for b in name.encode())
    if len(escaped) > _MAX_TOKEN_CHARS:
        raise ValueError(f"{what} {name[:40]!r}... is too long for a cache key ({len(escaped)} escaped chars)")
    return escaped


def _check_key(key: str) -> str:
    if not _KEY.match(key):
        raise ValueError(f"cache key {key[:80]!r} must be 1-128 characters of [A-Za-z0-9_-] (a sha256 hex)")
    return key


class ExactReader(Protocol):
    async def get(self, tenant: str, key: str, max_age_s: float | None = None) -> ExactEntry | None: ...


async def read_exact(store: ExactReader, tenant: str, request: ChatRequest,
                     max_age_s: float | None) -> ExactEntry | None:
    """The entry ``store`` holds for ``tenant``'s ``request`` (the exact key: the tenant and the
    canonical request), the read timed (``skinflint_cache_lookup_seconds{kind="exact"}``)."""
    started = time.perf_counter()
    entry = await store.get(tenant, exact_key(tenant, request), max_age_s)
    metrics.CACHE_LOOKUP_DURATION.labels("exact").observe(time.perf_counter() - started)
    return entry


class ExactStore:
    """Exact-cache entries in a JetStream KV bucket. Build with :meth:`open`.

    Every method raises nats-py's errors when the bus fails; the stage decides what a failure
    means (a lookup that fails is a miss; a store that fails is dropped).
    """

    def __init__(self, js: JetStreamContext, kv: KeyValue, bucket: str, max_age_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._js = js
        self._kv = kv
        self._bucket = bucket
        self._stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."
        self.max_age_s = max_age_s
        self._clock = clock

    @classmethod
    async def open(cls, js: JetStreamContext, *, max_age_s: float, bucket: str = EXACT_BUCKET,
                   clock: Callable[[], float] = time.time) -> ExactStore:
        """Create the bucket, or bring an existing one's max age (and per-message TTL) up to
        date. Idempotent: every replica calls it at start-up."""
        if max_age_s < 1:
            raise ValueError(f"max_age_s must be at least 1 s, got {max_age_s}")
        config = KeyValueConfig(bucket=bucket, history=1, ttl=max_age_s, storage=StorageType.FILE, direct=True)
        try:
            kv = await js.create_key_value(config)
        except BadRequestError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
            info = await js.stream_info(f"KV_{bucket}")
            await js.update_stream(info.config.evolve(max_age=max_age_s, allow_msg_ttl=True))
            log.info("exact cache bucket %s: max age set to %.0f s", bucket, max_age_s)
            kv = await js.key_value(bucket)
        return cls(js, kv, bucket, max_age_s, clock)

    @classmethod
    async def bind(cls, js: JetStreamContext, *, bucket: str = EXACT_BUCKET,
                   clock: Callable[[], float] = time.time) -> ExactStore:
        """The existing bucket, to read (ingress answers exact hits itself); raises nats-py's
        ``BucketNotFoundError`` while no cache replica has created it."""
        kv = await js.key_value(bucket)
        info = await js.stream_info(f"KV_{bucket}")
        return cls(js, kv, bucket, info.config.max_age or 0.0, clock)

    @property
    def bucket(self) -> str:
        return self._bucket

    def _entry_key(self, tenant: str, key: str) -> str:
        return f"e.{token(tenant, 'tenant')}.{_check_key(key)}"

    async def get(self, tenant: str, key: str, max_age_s: float | None = None) -> ExactEntry | None:
        """``tenant``'s entry under ``key``, or ``None``: absent, expired, older than
        ``max_age_s`` (the request's own limit), or unreadable (logged, never raised)."""
        kv_key = self._entry_key(tenant, key)
        try:
            stored = await self._kv.get(kv_key)
        except KeyNotFoundError:
            return None
        try:
            entry = decode(stored.value or b"")
        except MalformedEntry as exc:
            log.warning("exact cache: ignoring unreadable entry %s in bucket %s: %s", kv_key, self._bucket, exc)
            return None
        if entry.tenant != tenant:
            log.warning("exact cache: entry %s names tenant %r: ignored", kv_key, entry.tenant)
            return None
        now = self._clock()
        if now >= entry.expires_at:
            return None
        if max_age_s is not None and now - entry.created_at > max_age_s:
            return None
        return entry

    async def put(self, tenant: str, key: str, entry: ExactEntry, ttl_s: float) -> None:
        """Store ``entry`` for ``tenant`` under ``key`` for ``ttl_s`` seconds (rounded up to whole
        seconds, at most the bucket's max age), replacing what was there."""
        if entry.tenant != tenant:
            raise ValueError(f"entry belongs to tenant {entry.tenant!r}, not {tenant!r}")
        kv_key = self._entry_key(tenant, key)
        ttl = max(1, math.ceil(min(ttl_s, self.max_age_s)))
        # Index first: an entry then never exists without its markers (a failed entry write
        # leaves only markers, which are harmless; see the module docstring).
        for tag in dict.fromkeys(entry.tags):
            marker = f"i.{token(tag, 'tag')}.{kv_key.removeprefix('e.')}"
            await self._js.publish(self._prefix + marker, b"", msg_ttl=ttl)
        await self._js.publish(self._prefix + kv_key, encode(entry), msg_ttl=ttl)

    async def invalidate_tenant(self, tenant: str) -> None:
        """Remove every entry of ``tenant`` (and its tag markers); other tenants' stay."""
        t = token(tenant, "tenant")
        await self._js.purge_stream(self._stream, subject=f"{self._prefix}e.{t}.>")
        await self._js.purge_stream(self._stream, subject=f"{self._prefix}i.*.{t}.>")

    async def invalidate_tag(self, tag: str, tenant: str | None = None) -> int:
        """Remove every entry of ``tenant`` (of any tenant when None) stored with ``tag``; returns
        how many markers were followed. Entries without the tag stay."""
        index = f"{self._prefix}i.{token(tag, 'tag')}."
        if tenant is not None:
            index += f"{token(tenant, 'tenant')}."
        followed = 0
        # The server lists at most 100,000 subjects per call: repeat until none are left.
        while True:
            info = await self._js.stream_info(self._stream, subjects_filter=index + ">")
            markers = list((info.state.subjects or {}).keys())
            if not markers:
                return followed
            for marker in markers:
                entry = marker.removeprefix(f"{self._prefix}i.{token(tag, 'tag')}.")
                await self._js.purge_stream(self._stream, subject=f"{self._prefix}e.{entry}")
                await self._js.purge_stream(self._stream, subject=marker)
            followed += len(markers)

    async def purge_all(self) -> None:
        """Remove every entry of every tenant (the admin purge)."""
        await self._js.purge_stream(self._stream)
