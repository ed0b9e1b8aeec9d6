"""The cache stage's decisions: look up (exact, then semantic), learn, purge. Plain logic.

The stores come in through small protocols (the exact store, the semantic index, the embedder,
the verifier), so this module imports no bus and no database client, and unit tests run it on
fakes while the integration tests run it on JetStream KV, Qdrant and the real embedder.

A lookup, for one task (``CacheLogic.lookup``):

1. The tenant's mode ``off``, or the request's ``Cache-Control: no-cache``: no lookup
   (``bypass``); the answer is still learnt unless ``no-store`` says otherwise.
2. Exact: the key hashes the tenant and the canonical request (``services.shared.canonical``).
3. Semantic: the last user turn is embedded once; the nearest stored questions of the same
   partition (the tenant and everything but that turn's wording) are examined best first, and
   the verifier decides each pair. A candidate it accepts is served from the exact store under
   the candidate's key (gone there: not served).
4. A hit is served (``on``), or only recorded with a digest of the answer it would have served
   (``shadow``: the worker compares the model's answer with it); a miss goes on to the model
   with the embedding on the envelope, and the model's answer is announced back to ``learn``.

Overlap (``LookupPolicy.overlap``, on by default): when step 3 has to run for an interactive task
bound for inference, the task is handed to the model first (``Overlap``, marked
``cache_pending``) and step 3 runs while the model starts; the worker holds its output until the
stage's ``CacheVerdict``. A miss then costs the client the exact read and one hop, not the
embedding; a semantic hit is served by the stage and the model's work dropped, unsent and
uncharged (``services.shared.stage``, ``services.worker.generation.VerdictGate``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from contracts.subjects import INFER_STAGE, Priority
from contracts.v1 import (
    AnswerAnnounced,
    CacheMode,
    CacheNote,
    CacheOutcome,
    CachePurge,
    CachePurged,
    Final,
    TaskEnvelope,
)
from services.cache.entry import ExactEntry, entry_from_final, served_answer
from services.cache.exact_store import read_exact
from services.cache.fill import FillReason, may_store
from services.cache.semantic import Candidate, Vector
from services.cache.verifier import Decision
from services.shared import metrics
from services.shared.canonical import exact_key, last_user_text, partition_key
from services.shared.stage import Finish, Forward, Overlap
from services.shared.usage import answer_digest

log = logging.getLogger(__name__)


class ExactStoreLike(Protocol):
    async def get(self, tenant: str, key: str, max_age_s: float | None = None) -> ExactEntry | None: ...
    async def put(self, tenant: str, key: str, entry: ExactEntry, ttl_s: float) -> None: ...
    async def invalidate_tenant(self, tenant: str) -> None: ...
    async def invalidate_tag(self, tag: str, tenant: str | None = None) -> int: ...
    async def purge_all(self) -> None: ...


class SemanticIndexLike(Protocol):
    async def search(self, tenant: str, partition: str, vector: Vector, *, limit: int,
                     max_age_s: float | None = None) -> list[Candidate]: ...
    async def put(self, tenant: str, partition: str, key: str, vector: Vector, *, question: str,
                  created_at: float, expires_at: float, tags: Sequence[str] = ()) -> None: ...
    async def invalidate(self, *, tenant: str | None = None, tag: str | None = None) -> int: ...
    def may_hold(self, tenant: str, partition: str) -> bool: ...


class EmbedderLike(Protocol):
    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


class VerifierLike(Protocol):
    def decide(self, query: str, cached: str, cosine: float) -> Decision: ...


@dataclass(frozen=True)
class LookupPolicy:
    default_ttl_s: float
    max_ttl_s: float
    candidates: int = 4
    min_cosine: float = 0.6
    #: On an exact miss, hand the task to the model before the semantic lookup decides.
    overlap: bool = True


@dataclass(frozen=True)
class Match:
    """What the lookup found: the entry, how (exact or semantic), and for a semantic match its
    similarity and the verifier's score."""

    entry: ExactEntry
    kind: CacheOutcome
    similarity: float | None = None
    score: float | None = None


class CacheLogic:
    def __init__(self, exact: ExactStoreLike, index: SemanticIndexLike | None, embedder: EmbedderLike | None,
                 verifier: VerifierLike | None, policy: LookupPolicy, *, instance_id: str,
                 clock: Callable[[], float] = time.time) -> None:
        if index is not None and (embedder is None or verifier is None):
            raise ValueError("a semantic index needs an embedder and a verifier")
        self.exact = exact
        self.index = index
        self.embedder = embedder
        self.verifier = verifier
        self.policy = policy
        self.instance_id = instance_id
        self._clock = clock

    # --- the stage: one task ----------------------------------------------------------------
    async def lookup(self, env: TaskEnvelope) -> Forward | Finish | Overlap:
        started = time.perf_counter()
        control = env.cache_control
        fill = control.store and control.mode is not CacheMode.OFF
        if control.mode is CacheMode.OFF or not control.lookup:
            reason = "tenant policy: cache off" if control.mode is CacheMode.OFF else "request: no-cache"
            metrics.CACHE_LOOKUPS.labels(control.mode.value, CacheOutcome.BYPASS.value).inc()
            return Forward(env.model_copy(update={"cache": CacheNote(outcome=CacheOutcome.BYPASS, reason=reason,
                                                                      fill=fill)}))
        if not env.cache_exact_checked:  # ingress reads it first for the tenants it serves hits to
            entry = await read_exact(self.exact, env.tenant, env.request, control.max_age_s)
            if entry is not None:
                return self._conclude(env, Match(entry, CacheOutcome.EXACT), None, started)
        question = last_user_text(env.request)
        partition = partition_key(env.tenant, env.request)
        if self.index is None or not question or not self.index.may_hold(env.tenant, partition):
            # Nothing to compare with: no embedding on the client's path (learning computes it).
            return self._conclude(env, None, None, started)
        semantic = self._semantic_lookup(env, question, partition, started)
        if self.policy.overlap and self._may_overlap(env):
            # The model starts on the question while the semantic lookup runs; it holds its answer
            # until the verdict (a miss then costs the client only the exact read and one hop).
            metrics.CACHE_OVERLAPS.inc()
            return Overlap(env.model_copy(update={"cache_pending": True, "cache": None}), semantic)
        return await semantic

    @staticmethod
    def _may_overlap(env: TaskEnvelope) -> bool:
        """Overlap only where the next stage holds the task and the client waits (interactive
        inference): a bulk task gains nothing by it, and another stage cannot hold a verdict."""
        return env.priority is Priority.INTERACTIVE and env.itinerary[1:2] == [INFER_STAGE]

    async def _semantic_lookup(self, env: TaskEnvelope, question: str, partition: str,
                               started: float) -> Forward | Finish:
        control = env.cache_control
        vector = await self.embed(question)
        t1 = time.perf_counter()
        try:
            match = await self._semantic(env.tenant, partition, question, vector, control.max_age_s)
        finally:
            metrics.CACHE_LOOKUP_DURATION.labels("semantic").observe(time.perf_counter() - t1)
        return self._conclude(env, match, vector, started)

    def _conclude(self, env: TaskEnvelope, match: Match | None, vector: npt.NDArray[np.float32] | None,
                  started: float) -> Forward | Finish:
        """Serve ``match`` (mode on), or hand the task on with what the lookup found."""
        control = env.cache_control
        fill = control.store and control.mode is not CacheMode.OFF
        kind = match.kind if match is not None else CacheOutcome.MISS
        served = match is not None and control.mode is CacheMode.ON
        metrics.observe_cache_lookup(control.mode.value, kind.value, time.perf_counter() - started, served)
        if match is not None and served:
            return Finish(self.replay(env, match))
        note = CacheNote(outcome=CacheOutcome.MISS, fill=fill)
        if match is not None:  # shadow: record what would have been served, serve nothing
            note.shadow = match.kind.value  # type: ignore[assignment]
            note.shadow_similarity = match.similarity
            note.shadow_answer_sha256 = answer_digest(match.entry.text)
        elif control.mode is CacheMode.SHADOW:
            note.shadow = "miss"
        embedding = None if vector is None else [float(v) for v in vector]
        return Forward(env.model_copy(update={"cache": note, "query_embedding": embedding}))

    async def _semantic(self, tenant: str, partition: str, question: str,
                        vector: npt.NDArray[np.float32], max_age_s: float | None) -> Match | None:
        assert self.index is not None and self.verifier is not None
        candidates = await self.index.search(tenant, partition, vector, limit=self.policy.candidates,
                                             max_age_s=max_age_s)
        for candidate in candidates:
            if candidate.cosine < self.policy.min_cosine:
                break  # best first: the rest are further still
            decision = self.verifier.decide(question, candidate.question, candidate.cosine)
            if not decision.hit:
                continue
            entry = await self.exact.get(tenant, candidate.key, max_age_s)
            if entry is not None:
                return Match(entry, CacheOutcome.SEMANTIC, similarity=candidate.cosine, score=decision.score)
        return None

    async def embed(self, text: str) -> npt.NDArray[np.float32]:
        """The unit embedding of ``text``, computed off the event loop (ONNX Runtime releases
        the GIL, so other lookups go on meanwhile)."""
        assert self.embedder is not None
        t0 = time.perf_counter()
        embedder = self.embedder
        rows = await asyncio.to_thread(embedder.embed, [text])
        metrics.CACHE_LOOKUP_DURATION.labels("embed").observe(time.perf_counter() - t0)
        return rows[0]

    def replay(self, env: TaskEnvelope, match: Match) -> Final:
        """The cached answer as this request's final reply: no model tokens were used."""
        return served_answer(match.entry, env.request_id, served_by=f"cache:{self.instance_id}", now=self._clock(),
                             kind=match.kind, similarity=match.similarity, score=match.score)

    async def learn(self, announced: AnswerAnnounced) -> FillReason:
        """Store an announced answer if it may be (``services.cache.fill``); returns why (not)."""
        control = announced.control
        verdict = may_store(announced.request, announced.final, allow_sampled=control.store_sampled,
                            skip_store=not control.store or control.mode is CacheMode.OFF)
        if not verdict.ok:
            metrics.CACHE_STORES.labels(verdict.reason.value).inc()
            return verdict.reason
        tenant, request = announced.tenant, announced.request
        now = self._clock()
        ttl = min(control.ttl_s or self.policy.default_ttl_s, self.policy.max_ttl_s)
        tags = tuple(dict.fromkeys(control.tags))
        entry = entry_from_final(announced.final, tenant=tenant, created_at=now, ttl_s=ttl, tags=tags)
        key = exact_key(tenant, request)
        try:
            await self.exact.put(tenant, key, entry, ttl)
            question = last_user_text(request)
            if self.index is not None and question:
                vector = (np.asarray(announced.embedding, dtype=np.float32) if announced.embedding is not None
                          else await self.embed(question))
                await self.index.put(tenant, partition_key(tenant, request), key, vector, question=question,
                                     created_at=now, expires_at=now + ttl, tags=tags)
        except Exception:
            log.exception("storing the answer to %s failed; it is not cached", announced.request_id)
            metrics.CACHE_STORES.labels("failed").inc()
            raise
        metrics.CACHE_STORES.labels(FillReason.OK.value).inc()
        return FillReason.OK

    # --- purging -----------------------------------------------------------------------------
    async def purge(self, command: CachePurge) -> CachePurged:
        """Remove what ``command`` names from both stores (the semantic index first: a point whose
        entry is gone is harmless, but never the reverse order's window of a served stale hit)."""
        tenant, tag = command.tenant, command.tag
        semantic = 0
        if self.index is not None:
            semantic = await self.index.invalidate(tenant=tenant, tag=tag)
        exact: int | None = None
        if tag is not None:
            exact = await self.exact.invalidate_tag(tag, tenant)
            how = "tag"
        elif tenant is not None:
            await self.exact.invalidate_tenant(tenant)
            how = "tenant"
        else:
            await self.exact.purge_all()
            how = "all"
        metrics.CACHE_EVICTIONS.labels(how).inc(max(semantic, exact or 0))
        log.info("cache purge (tenant=%s, tag=%s): %s exact, %d semantic", tenant, tag, exact, semantic)
        return CachePurged(ok=True, exact_removed=exact, semantic_removed=semantic)

