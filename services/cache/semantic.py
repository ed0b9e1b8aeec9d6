"""The semantic cache's index: query embeddings in Qdrant, searched inside one partition.

A point is one cached question: its unit embedding, and a payload naming the tenant, the
partition (:func:`services.shared.canonical.partition_key`: the tenant and everything but the
last user turn's wording), the exact key of the answer in the exact store, the question's
normalised text (the verifier compares it with the new one), when it expires and its tags.
The answer itself lives only in the exact store: a semantic match is served by reading the
entry under its exact key, so purging or expiring the exact store can never leave a semantic
hit behind, and the index holds no answer text.

Qdrant runs embedded (local mode, a folder on disk) by default, or as a server by URL. With a
server, searches run in Qdrant (HNSW, payload indexes on tenant and partition). Local mode is one
process only (it locks its folder), and its search checks the payload filter point by point in
Python: about 58 µs per stored point of every tenant (``bench/cache_scale.py``: 8.6 ms at 100
points, 0.6 s at 10,000), too slow for the request path. So in local mode Qdrant persists the
index and this process searches its own copy of it (:class:`Partitions`, loaded at start, kept
in step on every write: the process is the only writer), by one matrix product per partition.
Point ids are derived from the exact key, so storing the same question again replaces its point
instead of adding one.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from qdrant_client import AsyncQdrantClient, models

log = logging.getLogger(__name__)

#: An embedding: a float32 row from the embedder, or floats off the wire.
Vector = npt.NDArray[np.float32] | Sequence[float]

#: Namespace of point ids (uuid5 of the exact key): any replica derives the same id.
_POINT_NAMESPACE = uuid.UUID("6f9d2c1e-51b4-4c1f-9a57-2c7b1f0e8d31")


@dataclass(frozen=True)
class Candidate:
    """One stored question near the query, best first."""

    key: str
    question: str
    cosine: float
    created_at: float


class _Partition:
    """One partition's points, as rows: unit vectors (in a buffer that doubles when full, so
    adding a point is amortised O(1)) and what a candidate needs."""

    def __init__(self, dim: int) -> None:
        self.keys: list[str] = []
        self.questions: list[str] = []
        self.tags: list[tuple[str, ...]] = []
        #: key -> its row.
        self.rows: dict[str, int] = {}
        self._buffer = np.zeros((16, dim), dtype=np.float32)
        self._times = np.zeros((16, 2), dtype=np.float64)  # created_at, expires_at

    @property
    def vectors(self) -> npt.NDArray[np.float32]:
        return self._buffer[:len(self.keys)]

    @property
    def created(self) -> npt.NDArray[np.float64]:
        return self._times[:len(self.keys), 0]

    @property
    def expires(self) -> npt.NDArray[np.float64]:
        return self._times[:len(self.keys), 1]

    def add(self, key: str, vector: npt.NDArray[np.float32], question: str, created_at: float,
            expires_at: float, tags: tuple[str, ...]) -> None:
        n = len(self.keys)
        if n == len(self._buffer):
            self._buffer = np.concatenate([self._buffer, np.zeros_like(self._buffer)])
            self._times = np.concatenate([self._times, np.zeros_like(self._times)])
        self._buffer[n] = vector
        self._times[n] = (created_at, expires_at)
        self.rows[key] = n
        self.keys.append(key)
        self.questions.append(question)
        self.tags.append(tags)

    def remove(self, keep: npt.NDArray[np.bool_]) -> int:
        rows = np.flatnonzero(keep).tolist()
        removed = len(self.keys) - len(rows)
        if removed:
            kept, times = self.vectors[keep], self._times[:len(self.keys)][keep]
            size = max(16, 2 * len(rows))
            self._buffer = np.zeros((size, self._buffer.shape[1]), dtype=np.float32)
            self._times = np.zeros((size, 2), dtype=np.float64)
            self._buffer[:len(rows)], self._times[:len(rows)] = kept, times
            self.keys = [self.keys[i] for i in rows]
            self.questions = [self.questions[i] for i in rows]
            self.tags = [self.tags[i] for i in rows]
            self.rows = {key: i for i, key in enumerate(self.keys)}
        return removed


class Partitions:
    """Local mode's in-process copy of the index, by (tenant, partition): exact cosine search."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._parts: dict[tuple[str, str], _Partition] = {}

    def __len__(self) -> int:
        return sum(len(p.keys) for p in self._parts.values())

    def holds(self, tenant: str, partition: str) -> bool:
        return (tenant, partition) in self._parts

    def put(self, tenant: str, partition: str, key: str, vector: npt.NDArray[np.float32], question: str,
            created_at: float, expires_at: float, tags: tuple[str, ...]) -> None:
        part = self._parts.get((tenant, partition))
        if part is None:
            part = self._parts[(tenant, partition)] = _Partition(self.dim)
        row = part.rows.get(key)
        if row is not None:
            keep = np.ones(len(part.keys), dtype=bool)
            keep[row] = False
            part.remove(keep)
        part.add(key, vector, question, created_at, expires_at, tags)

    def search(self, tenant: str, partition: str, vector: npt.NDArray[np.float32], *, limit: int, now: float,
               max_age_s: float | None) -> list[Candidate]:
        part = self._parts.get((tenant, partition))
        if part is None or not part.keys:
            return []
        scores = part.vectors @ vector
        live = part.expires > now
        if max_age_s is not None:
            live &= part.created >= now - max_age_s
        scores = np.where(live, scores, -np.inf)
        if limit < len(scores):  # the best ``limit`` without sorting them all
            top = np.argpartition(-scores, limit)[:limit]
            best = top[np.argsort(-scores[top])]
        else:
            best = np.argsort(-scores)
        return [Candidate(key=part.keys[i], question=part.questions[i], cosine=float(scores[i]),
                          created_at=float(part.created[i])) for i in best.tolist() if np.isfinite(scores[i])]

    def remove(self, *, tenant: str | None = None, tag: str | None = None, expired_at: float | None = None) -> int:
        removed = 0
        for (t, name), part in list(self._parts.items()):
            if tenant is not None and t != tenant:
                continue
            gone = np.ones(len(part.keys), dtype=bool)
            if tag is not None:
                gone &= np.array([tag in tags for tags in part.tags], dtype=bool)
            if expired_at is not None:
                gone &= part.expires <= expired_at
            removed += part.remove(~gone)
            if not part.keys:
                del self._parts[(t, name)]
        return removed


def point_id(key: str) -> str:
    return str(uuid.uuid5(_POINT_NAMESPACE, key))


def _match(field: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=field, match=models.MatchValue(value=value))


class SemanticIndex:
    """Questions by embedding, one Qdrant collection for every tenant and partition (the filter
    keeps them apart). Build with :meth:`open`; every method raises the client's errors."""

    def __init__(self, client: AsyncQdrantClient, collection: str, dim: int,
                 clock: Callable[[], float] = time.time, *, local: bool = False) -> None:
        self._client = client
        self.collection = collection
        self.dim = dim
        self._clock = clock
        #: Local mode: the in-process copy searches run on (see the module docstring).
        self.local: Partitions | None = Partitions(dim) if local else None

    @classmethod
    async def open(cls, *, url: str | None, path: Path | None, collection: str, dim: int,
                   clock: Callable[[], float] = time.time) -> SemanticIndex:
        """Connect to the server at ``url``, or open local mode in ``path`` (``None``: in memory),
        and create the collection and its payload indexes if they are missing (idempotent)."""
        if url:
            client = AsyncQdrantClient(url=url)
        elif path is not None:
            os.makedirs(path, exist_ok=True)
            client = AsyncQdrantClient(path=str(path))
        else:
            client = AsyncQdrantClient(location=":memory:")
        index = cls(client, collection, dim, clock, local=not url)
        await index._ensure_collection(server=bool(url))
        if index.local is not None:
            await index._load()
        return index

    async def _load(self) -> None:
        """Local mode: read every stored point into the in-process copy (once, at start)."""
        assert self.local is not None
        offset: models.ExtendedPointId | None = None
        while True:
            points, offset = await self._client.scroll(self.collection, limit=1000, offset=offset,
                                                       with_payload=True, with_vectors=True)
            for point in points:
                payload = point.payload or {}
                vector = np.asarray(point.vector, dtype=np.float32)
                self.local.put(str(payload["tenant"]), str(payload["partition"]), str(payload["key"]), vector,
                               str(payload["question"]), float(payload.get("created_at", 0.0)),
                               float(payload.get("expires_at", 0.0)), tuple(payload.get("tags") or ()))
            if offset is None:
                break
        log.info("semantic index: %d stored questions loaded from local mode", len(self.local))

    def may_hold(self, tenant: str, partition: str) -> bool:
        """False when the partition certainly holds nothing (local mode knows; a server is asked)."""
        return self.local is None or self.local.holds(tenant, partition)

    async def _ensure_collection(self, *, server: bool) -> None:
        if not await self._client.collection_exists(self.collection):
            await self._client.create_collection(
                self.collection, vectors_config=models.VectorParams(size=self.dim, distance=models.Distance.COSINE))
        if server:  # local mode has no payload indexes (it filters every point)
            for field, schema in (("tenant", models.PayloadSchemaType.KEYWORD),
                                  ("partition", models.PayloadSchemaType.KEYWORD),
                                  ("tags", models.PayloadSchemaType.KEYWORD),
                                  ("expires_at", models.PayloadSchemaType.FLOAT)):
                await self._client.create_payload_index(self.collection, field, field_schema=schema)

    async def search(self, tenant: str, partition: str, vector: Vector, *, limit: int,
                     max_age_s: float | None = None) -> list[Candidate]:
        """The ``limit`` stored questions of ``tenant``'s ``partition`` nearest ``vector`` that have
        not expired (and are younger than ``max_age_s``), best first."""
        now = self._clock()
        if self.local is not None:
            return self.local.search(tenant, partition, np.asarray(vector, dtype=np.float32), limit=limit, now=now,
                                     max_age_s=max_age_s)
        must: list[models.Condition] = [
            _match("tenant", tenant), _match("partition", partition),
            models.FieldCondition(key="expires_at", range=models.Range(gt=now)),
        ]
        if max_age_s is not None:
            must.append(models.FieldCondition(key="created_at", range=models.Range(gte=now - max_age_s)))
        found = await self._client.query_points(
            self.collection, query=[float(v) for v in vector], query_filter=models.Filter(must=must), limit=limit,
            with_payload=True)
        out = []
        for point in found.points:
            payload = point.payload or {}
            # The filter is the isolation; checked again so a bug there can never cross tenants.
            if payload.get("tenant") != tenant or payload.get("partition") != partition:
                log.error("semantic index returned a point of another tenant or partition: ignored")
                continue
            out.append(Candidate(key=str(payload["key"]), question=str(payload["question"]),
                                 cosine=float(point.score), created_at=float(payload.get("created_at", 0.0))))
        return out

    async def put(self, tenant: str, partition: str, key: str, vector: Vector, *, question: str,
                  created_at: float, expires_at: float, tags: Sequence[str] = ()) -> None:
        await self._client.upsert(self.collection, points=[models.PointStruct(
            id=point_id(key), vector=[float(v) for v in vector],
            payload={"tenant": tenant, "partition": partition, "key": key, "question": question,
                     "created_at": created_at, "expires_at": expires_at, "tags": list(tags)},
        )], wait=True)
        if self.local is not None:  # after the write: the copy never holds what Qdrant does not
            self.local.put(tenant, partition, key, np.asarray(vector, dtype=np.float32), question, created_at,
                           expires_at, tuple(tags))

    async def _delete(self, conditions: list[models.Condition]) -> int:
        selector = models.Filter(must=conditions) if conditions else models.Filter()
        count = (await self._client.count(self.collection, count_filter=selector, exact=True)).count
        if count:
            await self._client.delete(self.collection, points_selector=models.FilterSelector(filter=selector),
                                      wait=True)
        return count

    async def invalidate(self, *, tenant: str | None = None, tag: str | None = None) -> int:
        """Remove the points of ``tenant`` (every tenant when None) carrying ``tag`` (any when
        None); returns how many went."""
        conditions: list[models.Condition] = []
        if tenant is not None:
            conditions.append(_match("tenant", tenant))
        if tag is not None:
            conditions.append(_match("tags", tag))
        if self.local is not None:  # before the delete: never a search hit Qdrant no longer holds
            self.local.remove(tenant=tenant, tag=tag)
        return await self._delete(conditions)

    async def sweep_expired(self) -> int:
        """Remove points whose TTL ran out (searches skip them already); returns how many."""
        now = self._clock()
        if self.local is not None:
            self.local.remove(expired_at=now)
        return await self._delete([models.FieldCondition(key="expires_at", range=models.Range(lte=now))])

    async def count(self) -> int:
        return (await self._client.count(self.collection, exact=True)).count

    async def close(self) -> None:
        await self._client.close()
