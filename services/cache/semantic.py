"""The semantic cache's index: query embeddings in Qdrant, searched inside one partition.

A point is one cached question: its unit embedding, and a payload naming the tenant, the
partition (:func:`services.shared.canonical.partition_key`: the tenant and everything but the
last user turn's wording), the exact key of the answer in the exact store, the question's
normalised text (the verifier compares it with the new one), when it expires and its tags.
The answer itself lives only in the exact store: a semantic match is served by reading the
entry under its exact key, so purging or expiring the exact store can never leave a semantic
hit behind, and the index holds no answer text.

Qdrant runs embedded (local mode, a folder on disk) by default, or as a server by URL; the same
client API serves both. Local mode is one process only (it locks its folder) and searches by
brute force: fine for one cache replica up to the sizes ``bench/cache_latency.py`` reports, a
server beyond. Point ids are derived from the exact key, so storing the same question again
replaces its point instead of adding one.
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


def point_id(key: str) -> str:
    return str(uuid.uuid5(_POINT_NAMESPACE, key))


def _match(field: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=field, match=models.MatchValue(value=value))


class SemanticIndex:
    """Questions by embedding, one Qdrant collection for every tenant and partition (the filter
    keeps them apart). Build with :meth:`open`; every method raises the client's errors."""

    def __init__(self, client: AsyncQdrantClient, collection: str, dim: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self.collection = collection
        self.dim = dim
        self._clock = clock

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
        index = cls(client, collection, dim, clock)
        await index._ensure_collection(server=bool(url))
        return index

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
        return await self._delete(conditions)

    async def sweep_expired(self) -> int:
        """Remove points whose TTL ran out (searches skip them already); returns how many."""
        return await self._delete([models.FieldCondition(key="expires_at", range=models.Range(lte=self._clock()))])

    async def count(self) -> int:
        return (await self._client.count(self.collection, exact=True)).count

    async def close(self) -> None:
        await self._client.close()
