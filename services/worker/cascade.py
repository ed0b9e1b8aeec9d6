"""When a worker's tier should not answer after all: the cascade and the tier's fallback.

``failed_check`` and ``may_cascade`` are plain logic; ``HandOn`` hands a task to another tier
through ``StageHop`` (a task this tier's provider failed after its retries goes to the tier's
fallback at once, before the circuit breaker opens).

The cascade's cheap check: is the weak tier's answer good enough to send? With
``routing.cascade.enabled``, a request the router sends to the weak tier is answered there
first; when the answer fails this check, the worker hands the task to the strong tier instead
of replying (the weak attempt's tokens travel with it and are charged as the cascade's cost).
The checks are cheap and conservative: they catch answers that are plainly no answer, not
subtly wrong ones (that is the router's job, before the model runs).

Only interactive, non-streaming requests cascade: a streamed answer has reached the client as it
was generated, and a bulk item is retried on its own terms.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from faststream.nats import NatsBroker

from contracts.subjects import Priority
from contracts.v1 import ChatRequest, ErrorReply, Final, TaskEnvelope
from services.shared import metrics
from services.shared.errors import SkinflintError
from services.shared.slip import StageHop, with_tier
from services.shared.tiers import CascadeConfig, TiersFile
from services.worker.upstream import UNAVAILABLE

log = logging.getLogger(__name__)

#: Words in a row whose repetition marks a degenerate answer (a model stuck in a loop).
_NGRAM = 4
#: Share of an answer's 4-grams that are repeats at which it counts as stuck.
_REPEAT_SHARE = 0.5
#: Answers shorter than this many words are not judged for repetition.
_REPEAT_MIN_WORDS = 24


def failed_check(text: str, finish_reason: str, request: ChatRequest, config: CascadeConfig) -> str | None:
    """Why the weak tier's answer should not be sent (None: send it)."""
    if len(text.strip()) < config.min_chars:
        return "empty"
    if config.escalate_on_length and finish_reason == "length" and request.token_limit is None:
        # Cut short by the tier's own default length, not by a limit the client asked for.
        return "cut_short"
    words = text.lower().split()
    if len(words) >= _REPEAT_MIN_WORDS:
        grams = [tuple(words[i:i + _NGRAM]) for i in range(len(words) - _NGRAM + 1)]
        if 1 - len(set(grams)) / len(grams) >= _REPEAT_SHARE:
            return "repetitive"
    return None


def may_cascade(env: TaskEnvelope) -> bool:
    """Whether ``env`` is a first, weak attempt the cascade may escalate."""
    decision = env.route.decision
    return (decision is not None and decision.cascade and env.route.escalated_from is None
            and not env.request.stream and env.priority is Priority.INTERACTIVE)


#: Hands a task to another tier; True when that tier took it.
Deliver = Callable[[TaskEnvelope], Awaitable[bool]]


@dataclass(frozen=True)
class Escalator:
    """Sends a failed weak attempt on to ``strong``."""

    config: CascadeConfig
    strong: str
    deliver: Deliver

    def escalated(self, env: TaskEnvelope, final: Final, tier: str) -> TaskEnvelope:
        """``env`` as the strong tier gets it: this attempt's tier and tokens recorded."""
        route = env.route.model_copy(update={"tier": self.strong, "escalated_from": tier,
                                             "escalation_usage": final.usage})
        return env.model_copy(update={"route": route})

    async def __call__(self, env: TaskEnvelope, final: Final, tier: str) -> str | None:
        """Escalate ``env`` if its answer ``final`` fails the check and the strong tier takes it;
        returns why it was escalated (None: send ``final``)."""
        if not may_cascade(env):
            return None
        why = failed_check(final.text, final.finish_reason, env.request, self.config)
        if why is None or not await self.deliver(self.escalated(env, final, tier)):
            return None
        return why


class HandOn:
    """``generation.HandOn`` for one worker: a weak answer that fails the cascade's check goes to
    the strong tier (``escalator``); a task this tier's provider failed after its retries goes to
    the tier's ``fallback``. ``deliver`` hands a task to the tier its route names."""

    def __init__(self, tier: str, escalator: Escalator | None, fallback: str | None,
                 hop: Callable[[TaskEnvelope], Awaitable[object]]) -> None:
        self.tier = tier
        self.fallback = fallback
        self._escalator = escalator
        self._hop = hop

    @classmethod
    def for_tier(cls, tier: str, tiers: TiersFile, broker: NatsBroker) -> HandOn:
        hop = StageHop(broker, fallbacks=tiers.fallbacks())
        self = cls(tier, None, tiers.fallbacks().get(tier), hop.deliver)
        routing = tiers.routing
        if routing is not None and routing.cascade.enabled and routing.weak == tier:
            self._escalator = Escalator(routing.cascade, routing.strong, self.deliver)
        return self

    async def deliver(self, env: TaskEnvelope) -> bool:
        """Hand ``env`` to its route's tier; False (logged) when no worker of it took it."""
        try:
            await self._hop(env)
        except SkinflintError as exc:
            log.warning("request %s: tier %r did not take it (%s); answering here after all",
                        env.request_id, env.route.tier, exc.message)
            if env.route.escalated_from is not None:
                metrics.CASCADE_ESCALATIONS.labels(self.tier, "unavailable").inc()
            return False
        return True

    async def __call__(self, env: TaskEnvelope, reply: Final | ErrorReply) -> str | None:
        if isinstance(reply, Final):
            why = None if self._escalator is None else await self._escalator(env, reply, self.tier)
            if why is None:
                return None
            metrics.CASCADE_ESCALATIONS.labels(self.tier, why).inc()
            return f"cascade: {why}"
        if self.fallback is None or reply.code != UNAVAILABLE or env.priority is not Priority.INTERACTIVE:
            return None
        if not await self.deliver(with_tier(env, self.fallback)):
            return None
        metrics.TIER_FALLBACKS.labels(self.tier, self.fallback).inc()
        return f"fallback to {self.fallback!r}: {reply.message}"
