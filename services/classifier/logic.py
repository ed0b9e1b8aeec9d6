"""The classifier stage's work on one task: plain logic, no bus code.

A task marked ``route.routed`` (``model: "auto"``, or a tenant that routes every request) gets
its tier from the ``Router``; any other passes straight through (ingress leaves this stage off
the slip of those, so it rarely sees one). The query embedding is the one the cache stage
computed when it did; otherwise it is computed here, only when a policy that decides this request
uses it, and left on the envelope for the stages after (the cache learns the answer with it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt
from opentelemetry import trace

from contracts.v1 import RouteDecision, TaskEnvelope
from services.classifier.router import Router, query_of
from services.shared import metrics
from services.shared.stage import Forward


class EmbedderLike(Protocol):
    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


class ClassifierLogic:
    def __init__(self, router: Router, embedder: EmbedderLike | None) -> None:
        self.router = router
        self.embedder = embedder

    async def route(self, env: TaskEnvelope) -> Forward:
        if not env.route.routed:
            return Forward(env)
        started = time.perf_counter()
        given = env.query_embedding
        q = query_of(env.request, None if given is None else np.asarray(given, dtype=np.float32))
        embedded = False
        if q.embedding is None and self.embedder is not None and q.text and \
                self.router.needs_embedding(env.request_id, q, env.route.tenant_class):
            # ONNX Runtime releases the GIL: the event loop keeps taking other tasks meanwhile.
            vector = (await asyncio.to_thread(self.embedder.embed, [q.text]))[0]
            q = query_of(env.request, vector)
            embedded = True
        decision = self.router.decide(env.request_id, env.route, q)
        metrics.ROUTE_DECISION_DURATION.labels(str(embedded).lower()).observe(time.perf_counter() - started)
        observe(decision)
        update: dict[str, object] = {"route": env.route.model_copy(update={"tier": decision.tier,
                                                                           "decision": decision})}
        if embedded and q.embedding is not None:
            update["query_embedding"] = [float(v) for v in q.embedding]
        return Forward(env.model_copy(update=update))


def observe(decision: RouteDecision) -> None:
    """A decision on the metrics and the current span."""
    policy = decision.policy.split(":", 1)[0]
    metrics.ROUTE_DECISIONS.labels(decision.tier, policy).inc()
    for pick in decision.shadow:
        metrics.ROUTE_SHADOW.labels(pick.policy, pick.tier, decision.tier).inc()
    span = trace.get_current_span()
    span.set_attribute("sf.route.tier", decision.tier)
    span.set_attribute("sf.route.policy", decision.policy)
    if decision.score is not None:
        span.set_attribute("sf.route.score", decision.score)
    if decision.threshold is not None:
        span.set_attribute("sf.route.threshold", decision.threshold)
    for pick in decision.shadow:
        span.set_attribute(f"sf.route.shadow.{pick.policy}", pick.tier)
