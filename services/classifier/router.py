"""Picking a tier for a routed request: plain logic, no bus code.

The order is fixed and every step is recorded in the decision:

1. Rules (``routing.rules``), in order; the first whose conditions all hold decides.
2. Otherwise the live policy scores the request (how likely it needs the strong tier); at or
   above its threshold the strong tier answers, below it the weak one. The threshold is the one
   knob that trades cost against quality (``skinflint router eval`` draws the curve).
3. A minimum tier the request asked for (``X-Skinflint-Min-Tier``) raises the pick, never lowers it.

Shadow candidates score the same request on their share of traffic (chosen by a stable hash of
the request id, so a replayed request gets the same treatment); what they would have picked is
recorded beside the live decision and never acted on. ``skinflint route FILE`` runs exactly
this code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from contracts.v1 import ChatRequest, Route, RouteDecision, ShadowPick
from services.classifier.features import Query
from services.shared.canonical import last_user_text
from services.shared.tiers import PolicyConfig, RoutingConfig, Rule


class Scorer(Protocol):
    """A policy's score: how likely a request needs the strong tier, in [0, 1]."""

    name: str
    default_threshold: float

    def needs_embedding(self) -> bool: ...

    def score(self, q: Query) -> float: ...


@dataclass(frozen=True)
class Candidate:
    """A policy with its threshold; a shadow candidate also has a name and a share of traffic."""

    name: str
    scorer: Scorer
    threshold: float
    share: float = 1.0

    def runs_on(self, request_id: str) -> bool:
        """Whether this candidate scores ``request_id`` (stable: the same id, the same answer)."""
        if self.share >= 1.0:
            return True
        digest = hashlib.blake2b(f"{self.name}:{request_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self.share


def query_of(request: ChatRequest, embedding: npt.NDArray[np.float32] | None = None) -> Query:
    """What a policy sees of a chat request."""
    return Query(text=last_user_text(request),
                 conversation_chars=sum(len(m.content) for m in request.messages),
                 turns=len(request.messages), embedding=embedding)


def rule_matches(rule: Rule, q: Query, tenant_class: str | None) -> bool:
    if rule.min_chars is not None and q.conversation_chars < rule.min_chars:
        return False
    if rule.max_chars is not None and q.conversation_chars > rule.max_chars:
        return False
    if rule.min_turns is not None and q.turns < rule.min_turns:
        return False
    return rule.tenant_class is None or tenant_class in rule.tenant_class


class Router:
    """Decides the tier of routed requests. Thread-safe and stateless between calls."""

    def __init__(self, routing: RoutingConfig, live: Candidate, shadows: Sequence[Candidate] = ()) -> None:
        self.routing = routing
        self.live = live
        self.shadows = tuple(shadows)
        #: Cost order of the tiers a routed request may get: weak below strong.
        self._rank = {routing.weak: 0, routing.strong: 1}

    def rule_for(self, q: Query, tenant_class: str | None) -> Rule | None:
        return next((r for r in self.routing.rules if rule_matches(r, q, tenant_class)), None)

    def shadows_for(self, request_id: str) -> list[Candidate]:
        return [c for c in self.shadows if c.runs_on(request_id)]

    def needs_embedding(self, request_id: str, q: Query, tenant_class: str | None) -> bool:
        """Whether deciding this request uses the query embedding (so it is worth computing)."""
        live = self.rule_for(q, tenant_class) is None and self.live.scorer.needs_embedding()
        return live or any(c.scorer.needs_embedding() for c in self.shadows_for(request_id))

    def pick(self, candidate: Candidate, q: Query) -> tuple[str, float]:
        score = float(candidate.scorer.score(q))
        return (self.routing.strong if score >= candidate.threshold else self.routing.weak), score

    def decide(self, request_id: str, route: Route, q: Query) -> RouteDecision:
        rule = self.rule_for(q, route.tenant_class)
        if rule is not None:
            decision = RouteDecision(tier=rule.tier, policy=f"rule:{rule.name}", reason=f"rule {rule.name!r} matched")
        else:
            tier, score = self.pick(self.live, q)
            side = "at or above" if tier == self.routing.strong else "below"
            decision = RouteDecision(tier=tier, policy=self.live.name, score=score, threshold=self.live.threshold,
                                     reason=f"score {score:.3f} {side} threshold {self.live.threshold:.3f}")
        if route.min_tier is not None and self._rank.get(route.min_tier, 0) > self._rank.get(decision.tier, 0):
            decision = decision.model_copy(update={
                "tier": route.min_tier, "policy": "min_tier",
                "reason": f"{decision.reason}; raised to {route.min_tier!r} by X-Skinflint-Min-Tier"})
        shadow = []
        for candidate in self.shadows_for(request_id):
            tier, score = self.pick(candidate, q)
            shadow.append(ShadowPick(policy=candidate.name, tier=tier, score=score, threshold=candidate.threshold))
        decision.shadow = shadow
        decision.cascade = self.routing.cascade.enabled and decision.tier == self.routing.weak
        return decision


class PolicyMissing(RuntimeError):
    """A policy's artifact is missing or invalid; the message names the command that builds it."""


def load_scorer(policy: PolicyConfig) -> Scorer:
    """The scorer a policy config names (the learned artifact is loaded and checked here)."""
    if policy.kind == "length":
        from services.classifier.baselines import LengthPolicy

        return LengthPolicy()
    from services.classifier.learned import ArtifactError, LearnedPolicy

    try:
        return LearnedPolicy.load(policy.artifact)
    except ArtifactError as exc:
        raise PolicyMissing(str(exc)) from exc


def build_router(routing: RoutingConfig) -> Router:
    """The router a routing config describes, its policies loaded."""
    live_scorer = load_scorer(routing.policy)
    live = Candidate(live_scorer.name, live_scorer, _threshold(routing.policy, live_scorer))
    shadows = []
    for s in routing.shadow:
        scorer = load_scorer(s)
        shadows.append(Candidate(s.name, scorer, _threshold(s, scorer), s.share))
    return Router(routing, live, shadows)


def _threshold(policy: PolicyConfig, scorer: Scorer) -> float:
    return policy.threshold if policy.threshold is not None else scorer.default_threshold
