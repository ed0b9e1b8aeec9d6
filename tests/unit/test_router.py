"""The router's decision: rules first, then the policy against its threshold, a minimum tier that
only raises, shadow candidates recorded and never acted on; the classifier stage's logic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest

from contracts.v1 import ChatRequest, Route, TaskEnvelope
from services.classifier.features import Query
from services.classifier.logic import ClassifierLogic
from services.classifier.router import Candidate, Router, query_of
from services.shared.tiers import RoutingConfig, Rule

pytestmark = pytest.mark.unit


@dataclass
class Fixed:
    """A scorer that answers ``value``, or the share of digits in the text when ``value`` is None."""

    value: float | None = None
    embedding: bool = False
    name: str = "fixed"
    default_threshold: float = 0.5
    seen: list[Query] = field(default_factory=list)

    def needs_embedding(self) -> bool:
        return self.embedding

    def score(self, q: Query) -> float:
        self.seen.append(q)
        if self.value is not None:
            return self.value
        return sum(c.isdigit() for c in q.text) / max(1, len(q.text))


def routing(**overrides: object) -> RoutingConfig:
    return RoutingConfig.model_validate({"weak": "small", "strong": "large", "default_tier": "large", **overrides})


def router(score: float | None = None, threshold: float = 0.5, shadows: Sequence[Candidate] = (),
           **config: object) -> Router:
    return Router(routing(**config), Candidate("learned", Fixed(score), threshold), shadows)


def q(text: str, turns: int = 1) -> Query:
    return Query(text=text, conversation_chars=len(text), turns=turns)


ROUTED = Route(model="auto", tier="large", counterfactual_tier="large", routed=True)


@pytest.mark.parametrize(("score", "tier"), [(0.49, "small"), (0.5, "large"), (0.9, "large")])
def test_the_score_against_the_threshold_picks_the_tier(score: float, tier: str) -> None:
    decision = router(score).decide("r1", ROUTED, q("What is 2 + 2?"))
    assert (decision.tier, decision.policy, decision.score, decision.threshold) == (tier, "learned", score, 0.5)


def test_the_first_rule_that_matches_decides_before_the_policy() -> None:
    rules = [Rule(name="long", tier="large", min_chars=100), Rule(name="short", tier="small", max_chars=20),
             Rule(name="short-too", tier="large", max_chars=30)]
    r = router(score=0.99, rules=rules)
    short = r.decide("r1", ROUTED, q("hello"))
    assert (short.tier, short.policy, short.score) == ("small", "rule:short", None)
    long = r.decide("r2", ROUTED, q("x" * 150))
    assert (long.tier, long.policy) == ("large", "rule:long")
    middle = r.decide("r3", ROUTED, q("x" * 50))
    assert (middle.tier, middle.policy) == ("large", "learned")


def test_a_tenant_class_rule_and_a_turns_rule() -> None:
    rules = [Rule(name="pro", tier="large", tenant_class=["pro", "enterprise"]),
             Rule(name="long-chat", tier="large", min_turns=6)]
    r = router(score=0.0, rules=rules)
    assert r.decide("r1", ROUTED.model_copy(update={"tenant_class": "pro"}), q("hi")).policy == "rule:pro"
    assert r.decide("r2", ROUTED.model_copy(update={"tenant_class": "free"}), q("hi")).tier == "small"
    assert r.decide("r3", ROUTED, q("hi", turns=7)).policy == "rule:long-chat"


def test_a_minimum_tier_raises_the_pick_and_never_lowers_it() -> None:
    raised = router(score=0.1).decide("r1", ROUTED.model_copy(update={"min_tier": "large"}), q("hi"))
    assert (raised.tier, raised.policy) == ("large", "min_tier")
    assert "X-Skinflint-Min-Tier" in raised.reason
    kept = router(score=0.9).decide("r2", ROUTED.model_copy(update={"min_tier": "small"}), q("hi"))
    assert (kept.tier, kept.policy) == ("large", "learned")


def test_shadow_candidates_are_recorded_on_their_share_and_never_acted_on() -> None:
    eager = Candidate("eager", Fixed(0.9), 0.5)
    half = Candidate("half", Fixed(0.9), 0.5, share=0.5)
    r = router(score=0.1, shadows=[eager, half])
    decisions = [r.decide(f"req-{i}", ROUTED, q("hi")) for i in range(400)]
    assert all(d.tier == "small" for d in decisions)
    assert all([p.policy for p in d.shadow][:1] == ["eager"] and d.shadow[0].tier == "large" for d in decisions)
    on_half = sum(any(p.policy == "half" for p in d.shadow) for d in decisions)
    assert 150 < on_half < 250
    # Stable: the same request id is in the share or out of it every time.
    again = [r.decide(f"req-{i}", ROUTED, q("hi")) for i in range(400)]
    assert [len(d.shadow) for d in again] == [len(d.shadow) for d in decisions]


def test_cascade_marks_only_a_weak_pick() -> None:
    r = router(score=0.1, cascade={"enabled": True})
    assert r.decide("r1", ROUTED, q("hi")).cascade
    assert not router(score=0.9, cascade={"enabled": True}).decide("r1", ROUTED, q("hi")).cascade


def test_the_query_is_the_last_user_turn_and_the_whole_conversation_length() -> None:
    req = ChatRequest(model="auto", messages=[{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "First  question"},
                                              {"role": "assistant", "content": "An answer"},
                                              {"role": "user", "content": "Second question"}])
    query = query_of(req)
    assert (query.text, query.turns, query.conversation_chars) == ("Second question", 4, 9 + 15 + 9 + 15)


class CountingEmbedder:
    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        return np.full((len(texts), 384), 1 / np.sqrt(384), dtype=np.float32)


def envelope(route: Route, embedding: list[float] | None = None) -> TaskEnvelope:
    return TaskEnvelope(request_id="r1", tenant="demo", request=ChatRequest(
        model=route.model, messages=[{"role": "user", "content": "What is 12 * 12?"}]), route=route,
        reply_subject="sf.v1.reply.x.r1", itinerary=["classifier", "infer"], received_at=0.0,
        query_embedding=embedding)


async def test_the_stage_embeds_only_when_no_earlier_stage_did_and_passes_it_on() -> None:
    embedder = CountingEmbedder()
    scorer = Fixed(0.9, embedding=True)
    logic = ClassifierLogic(Router(routing(), Candidate("learned", scorer, 0.5)), embedder)
    forwarded = (await logic.route(envelope(ROUTED))).env
    assert embedder.calls == 1 and scorer.seen[-1].embedding is not None
    assert forwarded.query_embedding is not None and len(forwarded.query_embedding) == 384
    assert forwarded.route.tier == "large" and forwarded.route.decision is not None
    assert forwarded.route.counterfactual_tier == "large"
    given = [0.0] * 383 + [1.0]
    await logic.route(envelope(ROUTED, embedding=given))
    assert embedder.calls == 1
    assert scorer.seen[-1].embedding is not None and scorer.seen[-1].embedding[-1] == 1.0


async def test_a_request_that_is_not_routed_passes_untouched() -> None:
    embedder = CountingEmbedder()
    logic = ClassifierLogic(Router(routing(), Candidate("learned", Fixed(0.9, embedding=True), 0.5)), embedder)
    named = Route(model="smollm2-135m", tier="small", counterfactual_tier="small")
    env = envelope(named)
    forwarded = (await logic.route(env)).env
    assert forwarded is env and forwarded.route.decision is None and embedder.calls == 0


async def test_a_rule_that_decides_needs_no_embedding() -> None:
    embedder = CountingEmbedder()
    r = Router(routing(rules=[Rule(name="all", tier="large", min_chars=0)]),
               Candidate("learned", Fixed(0.1, embedding=True), 0.5))
    forwarded = (await ClassifierLogic(r, embedder).route(envelope(ROUTED))).env
    assert embedder.calls == 0 and forwarded.route.decision is not None
    assert forwarded.route.decision.policy == "rule:all"
