"""The cache stage's decisions on in-memory stores: what is looked up, served, noted and learnt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from contracts.subjects import Priority
from contracts.v1 import (
    AnswerAnnounced,
    CacheControl,
    CacheMode,
    CacheOutcome,
    CachePurge,
    ChatRequest,
    Final,
    Route,
    TaskEnvelope,
    TokenUsage,
)
from services.cache.entry import ExactEntry
from services.cache.fill import FillReason
from services.cache.logic import CacheLogic, LookupPolicy
from services.cache.semantic import Candidate, Vector
from services.cache.verifier import Decision
from services.shared.canonical import exact_key, last_user_text, partition_key
from services.shared.stage import Finish, Forward, Overlap
from services.shared.usage import answer_digest

pytestmark = pytest.mark.unit
NOW = 1_000_000.0


class Exact:
    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], ExactEntry] = {}

    async def get(self, tenant: str, key: str, max_age_s: float | None = None) -> ExactEntry | None:
        entry = self.entries.get((tenant, key))
        if entry is None or (max_age_s is not None and NOW - entry.created_at > max_age_s):
            return None
        return entry

    async def put(self, tenant: str, key: str, entry: ExactEntry, ttl_s: float) -> None:
        self.entries[(tenant, key)] = entry

    async def invalidate_tenant(self, tenant: str) -> None:
        self.entries = {k: v for k, v in self.entries.items() if k[0] != tenant}

    async def invalidate_tag(self, tag: str, tenant: str | None = None) -> int:
        gone = [k for k, v in self.entries.items() if tag in v.tags and tenant in (None, k[0])]
        for k in gone:
            del self.entries[k]
        return len(gone)

    async def purge_all(self) -> None:
        self.entries.clear()


@dataclass
class Index:
    points: list[tuple[str, str, str, str, npt.NDArray[np.float32]]] = field(default_factory=list)

    async def search(self, tenant: str, partition: str, vector: Vector, *, limit: int,
                     max_age_s: float | None = None) -> list[Candidate]:
        found = [Candidate(key=k, question=q, cosine=float(np.dot(v, np.asarray(vector))), created_at=NOW)
                 for t, p, k, q, v in self.points if (t, p) == (tenant, partition)]
        return sorted(found, key=lambda c: -c.cosine)[:limit]

    async def put(self, tenant: str, partition: str, key: str, vector: Vector, *, question: str,
                  created_at: float, expires_at: float, tags: Sequence[str] = ()) -> None:
        self.points.append((tenant, partition, key, question, np.asarray(vector, dtype=np.float32)))

    def may_hold(self, tenant: str, partition: str) -> bool:
        return any((t, p) == (tenant, partition) for t, p, *_ in self.points)

    async def invalidate(self, *, tenant: str | None = None, tag: str | None = None) -> int:
        before = len(self.points)
        self.points = [p for p in self.points if tenant is not None and p[0] != tenant]
        return before - len(self.points)


class Embedder:
    """Texts about the same thing (their first word) get the same vector."""

    calls = 0

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        Embedder.calls += 1
        rows = []
        for text in texts:
            v = np.zeros(8, dtype=np.float32)
            v[hash(text.split()[0].lower()) % 8] = 1.0
            rows.append(v)
        return np.stack(rows)


class Verifier:
    """Accepts any pair whose texts differ only in case and punctuation."""

    def decide(self, query: str, cached: str, cosine: float) -> Decision:
        same = query.lower().strip("?!. ") == cached.lower().strip("?!. ")
        return Decision(hit=same, score=1.0 if same else -1.0, cosine=cosine)


def logic(overlap: bool = False) -> CacheLogic:
    """The stage's logic on fakes; ``overlap`` off unless a test is about it (the decision then
    comes back whole from ``lookup``)."""
    return CacheLogic(Exact(), Index(), Embedder(), Verifier(),
                      LookupPolicy(default_ttl_s=60, max_ttl_s=600, overlap=overlap),
                      instance_id="c1", clock=lambda: NOW)


def envelope(text: str, tenant: str = "demo", **control: Any) -> TaskEnvelope:
    req = ChatRequest.model_validate({"model": "m", "temperature": 0, "messages": [{"role": "user", "content": text}]})
    return TaskEnvelope(request_id="r1", tenant=tenant, request=req, route=Route(model="m", tier="small"),
                        reply_subject="x", itinerary=["cache", "infer"], received_at=NOW,
                        cache_control=CacheControl.model_validate(control))


def answered(env: TaskEnvelope, text: str = "Paris.", finish: str = "stop") -> AnswerAnnounced:
    final = Final(request_id=env.request_id, text=text, finish_reason=finish,  # type: ignore[arg-type]
                  usage=TokenUsage(prompt_tokens=10, completion_tokens=3), model="m", tier="small", served_by="w")
    return AnswerAnnounced(request_id=env.request_id, tenant=env.tenant, request=env.request,
                           control=env.cache_control, embedding=env.query_embedding, final=final)


async def test_a_miss_carries_the_embedding_on_and_a_repeat_is_served_whole() -> None:
    cache = logic()
    calls = Embedder.calls
    empty = await cache.lookup(envelope("Capital of Italy?"))
    # An empty partition: nothing to compare with, so nothing is embedded on the client's path.
    assert isinstance(empty, Forward) and empty.env.query_embedding is None and Embedder.calls == calls
    assert await cache.learn(answered(empty.env, text="Rome.")) is FillReason.OK
    assert Embedder.calls == calls + 1  # learning embeds it, off the client's path
    first = await cache.lookup(envelope("Capital of France?"))
    assert isinstance(first, Forward) and first.env.cache is not None
    assert (first.env.cache.outcome, first.env.cache.fill) == (CacheOutcome.MISS, True)
    assert first.env.query_embedding is not None and len(first.env.query_embedding) == 8
    calls = Embedder.calls
    assert await cache.learn(answered(first.env)) is FillReason.OK
    assert Embedder.calls == calls  # the embedding from the envelope, not computed again
    hit = await cache.lookup(envelope("Capital of France?"))
    assert isinstance(hit, Finish) and isinstance(hit.reply, Final)
    assert (hit.reply.text, hit.reply.usage.completion_tokens, hit.reply.served_by) == ("Paris.", 0, "cache:c1")
    assert hit.reply.cache is not None and hit.reply.cache.outcome is CacheOutcome.EXACT
    assert (hit.reply.cache.source_tier, hit.reply.cache.source_completion_tokens) == ("small", 3)


async def test_a_reworded_question_the_verifier_accepts_is_a_semantic_hit_in_its_partition_only() -> None:
    cache = logic()
    first = await cache.lookup(envelope("Capital of France?"))
    assert isinstance(first, Forward)
    await cache.learn(answered(first.env))
    hit = await cache.lookup(envelope("capital of france"))
    assert isinstance(hit, Finish) and isinstance(hit.reply, Final) and hit.reply.cache is not None
    assert hit.reply.cache.outcome is CacheOutcome.SEMANTIC and hit.reply.cache.similarity == pytest.approx(1.0)
    assert isinstance(await cache.lookup(envelope("capital of france", tenant="acme")), Forward)
    assert isinstance(await cache.lookup(envelope("Capital of Spain?")), Forward)  # verifier says no


async def test_shadow_mode_serves_nothing_and_notes_what_it_would_have_served() -> None:
    cache = logic()
    first = await cache.lookup(envelope("Capital of France?", mode="shadow"))
    assert isinstance(first, Forward) and first.env.cache is not None and first.env.cache.shadow == "miss"
    await cache.learn(answered(first.env))
    again = await cache.lookup(envelope("Capital of France?", mode="shadow"))
    assert isinstance(again, Forward) and again.env.cache is not None
    note = again.env.cache
    assert (note.outcome, note.shadow, note.shadow_answer_sha256) == (
        CacheOutcome.MISS, "exact", answer_digest("Paris."))


@pytest.mark.parametrize(("control", "reason"), [
    ({"lookup": False}, "request: no-cache"), ({"mode": "off"}, "tenant policy: cache off")])
async def test_a_bypass_does_not_look_up(control: dict[str, Any], reason: str) -> None:
    cache = logic()
    out = await cache.lookup(envelope("Capital of France?", **control))
    assert isinstance(out, Forward) and out.env.cache is not None
    assert (out.env.cache.outcome, out.env.cache.reason) == (CacheOutcome.BYPASS, reason)
    assert out.env.cache.fill is (control.get("mode") != CacheMode.OFF.value)


@pytest.mark.parametrize(("control", "finish", "reason"), [
    ({}, "length", FillReason.TRUNCATED), ({}, "abort", FillReason.CANCELLED),
    ({"store": False}, "stop", FillReason.SKIPPED), ({"mode": "off"}, "stop", FillReason.SKIPPED),
])
async def test_answers_that_must_not_be_learnt_are_not(control: dict[str, Any], finish: str,
                                                     reason: FillReason) -> None:
    cache = logic()
    env = envelope("Capital of France?", **control)
    assert await cache.learn(answered(env, finish=finish)) is reason
    assert isinstance(await cache.lookup(envelope("Capital of France?")), Forward)


async def test_ttl_is_the_requests_capped_by_the_maximum_and_tags_are_kept() -> None:
    cache = logic()
    env = envelope("Capital of France?", ttl_s=10_000, tags=["kb:v3", "kb:v3"])
    await cache.learn(answered(env))
    entry = next(iter(cache.exact.entries.values()))  # type: ignore[attr-defined]
    assert (entry.expires_at - entry.created_at, entry.tags) == (600, ("kb:v3",))


async def test_purges_reach_both_stores() -> None:
    cache = logic()
    for tenant in ("demo", "acme"):
        env = envelope("Capital of France?", tenant=tenant, tags=["kb:v3"])
        await cache.learn(answered(env))
    result = await cache.purge(CachePurge(tenant="demo", tag="kb:v3"))
    assert (result.ok, result.exact_removed) == (True, 1)
    key = exact_key("acme", envelope("Capital of France?").request)
    assert await cache.exact.get("acme", key) is not None
    assert isinstance(await cache.lookup(envelope("Capital of France?")), Forward)
    req = envelope("Capital of France?").request
    assert partition_key("demo", req) != partition_key("acme", req) and last_user_text(req) == "Capital of France?"


# --- overlap: the model starts while the semantic lookup decides ---------------------------------

async def test_overlap_hands_the_task_on_pending_and_decides_a_miss_meanwhile() -> None:
    cache = logic(overlap=True)
    stored = envelope("Capital of France?")
    assert await cache.learn(answered(stored, text="Paris.")) is FillReason.OK
    outcome = await cache.lookup(envelope("Largest city of Peru?"))
    assert isinstance(outcome, Overlap)
    # Handed on marked pending, with no note yet: the worker learns it from the verdict.
    assert outcome.env.cache_pending and outcome.env.cache is None
    decided = await outcome.decide
    assert isinstance(decided, Forward) and decided.env.cache is not None
    assert decided.env.cache.outcome is CacheOutcome.MISS and decided.env.query_embedding is not None


async def test_overlap_decides_a_semantic_hit_that_the_stage_serves() -> None:
    cache = logic(overlap=True)
    assert await cache.learn(answered(envelope("Capital of France?"), text="Paris.")) is FillReason.OK
    outcome = await cache.lookup(envelope("capital of france!"))
    assert isinstance(outcome, Overlap)
    decided = await outcome.decide
    assert isinstance(decided, Finish) and isinstance(decided.reply, Final)
    assert decided.reply.text == "Paris." and decided.reply.cache is not None
    assert decided.reply.cache.outcome is CacheOutcome.SEMANTIC


@pytest.mark.parametrize("case", ["exact", "empty partition", "bulk", "not before inference"])
async def test_overlap_only_where_a_semantic_lookup_runs_before_interactive_inference(case: str) -> None:
    cache = logic(overlap=True)
    assert await cache.learn(answered(envelope("Capital of France?"), text="Paris.")) is FillReason.OK
    env = envelope("Capital of France?" if case == "exact" else "capital of france!")
    if case == "empty partition":
        env = envelope("capital of france!", tenant="other")
    elif case == "bulk":
        env.priority = Priority.BULK
    elif case == "not before inference":
        env.itinerary = ["cache", "retrieval", "infer"]
    outcome = await cache.lookup(env)
    assert not isinstance(outcome, Overlap)
    if case in ("exact", "bulk", "not before inference"):
        assert isinstance(outcome, Finish)  # decided whole, and served
    else:
        assert isinstance(outcome, Forward) and outcome.env.cache is not None
