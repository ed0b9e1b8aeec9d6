"""Usage events onto JetStream, for every service that ends a task (workers, stages, ingress).

One usage event per request, announced on the connection *before* the reply that ends the task
(NATS keeps one connection's messages in order, so a reply that reached ingress proves its
usage event reached the server), its acknowledgement collected off the answer's path by the
outbox, which re-sends with the same ``Nats-Msg-Id`` (stored once) until JetStream has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from typing import Any

from faststream.nats import NatsBroker
from nats.js.client import JetStreamContext

from contracts.subjects import USAGE_STREAM, USAGE_SUBJECT
from contracts.v1 import CacheNote, CacheOutcome, ErrorReply, Final, Route, TaskEnvelope, UsageEvent
from services.shared import lane
from services.shared.broker import is_connected
from services.shared.canonical import normalise_text
from services.shared.outbox import UsageOutbox


class UsagePublisher:
    """Publishes usage events. ``start`` runs the outbox's re-sender; ``stop`` flushes first."""

    def __init__(self, broker: NatsBroker, ack_timeout_s: float = 5.0) -> None:
        self._broker = broker
        self._js: JetStreamContext | None = None
        self.outbox = UsageOutbox(self.announce, self.store, ack_timeout_s=ack_timeout_s)
        self._sender: asyncio.Task[None] | None = None

    @property
    def js(self) -> JetStreamContext:
        # One context for the process: its asynchronous publishes share one reply subscription.
        if self._js is None:
            self._js = self._broker.connection.jetstream()
        return self._js

    async def publish(self, event: UsageEvent, wait_stored: bool = False) -> None:
        """Put ``event`` on the connection now, ahead of anything published after it; with
        ``wait_stored``, return only once JetStream has stored it."""
        stored = await self.outbox.put(event, lane.trace_headers())
        if wait_stored:
            await stored

    @staticmethod
    def _message(event: UsageEvent, trace: dict[str, str] | None) -> tuple[bytes, dict[str, str]]:
        return event.model_dump_json().encode(), {**(trace or {}), "Nats-Msg-Id": f"usage-{event.request_id}"}

    async def announce(self, event: UsageEvent, trace: dict[str, str] | None) -> asyncio.Future[Any]:
        """Put one usage event on the connection now; the future resolves with JetStream's ack."""
        data, headers = self._message(event, trace)
        return await self.js.publish_async(USAGE_SUBJECT, data, stream=USAGE_STREAM.name, headers=headers)

    async def store(self, event: UsageEvent, trace: dict[str, str] | None) -> object:
        """Publish one usage event and wait until it is stored (the outbox's re-send)."""
        data, headers = self._message(event, trace)
        return await self.js.publish(USAGE_SUBJECT, data, stream=USAGE_STREAM.name, headers=headers)

    def start(self) -> None:
        self._sender = asyncio.create_task(self.outbox.run())

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Store the events still held (while the bus is up), then stop the re-sender."""
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None
        if is_connected(self._broker):
            await self.outbox.flush(timeout_s)
        self.outbox.cancel_waiters()


def answered_without_model(env: TaskEnvelope, reply: Final | ErrorReply, answered_by: str) -> UsageEvent:
    """The usage event of a task answered (or refused) before any engine ran: zero tokens. A lever
    that answers (the cache) says so in its reply's note, which carries what the answer it served
    had cost."""
    note = reply.cache if isinstance(reply, Final) else env.cache
    return UsageEvent(
        request_id=env.request_id, tenant=env.tenant, api_key_id=env.api_key_id, model=env.route.model,
        tier=env.route.tier, priority=env.priority, status="ok" if isinstance(reply, Final) else "error",
        prompt_tokens=0, completion_tokens=0, worker=answered_by, occurred_at=time.time(), job_id=env.job_id,
        **cache_usage(note), **route_usage(env.route),
    )


def route_usage(route: Route) -> dict[str, Any]:
    """The usage event's routing fields: the tier without routing (what savings count against),
    how a routed request's tier was picked, and a fallback taken."""
    fields: dict[str, Any] = {"counterfactual_tier": route.counterfactual_tier, "fallback_from": route.fallback_from,
                              "escalated_from": route.escalated_from}
    if route.escalation_usage is not None:
        fields.update(escalation_prompt_tokens=route.escalation_usage.prompt_tokens,
                      escalation_completion_tokens=route.escalation_usage.completion_tokens)
    decision = route.decision
    if decision is not None:
        fields.update(route_policy=decision.policy, route_score=decision.score,
                      route_threshold=decision.threshold, route_shadow=decision.shadow)
    return fields


def cache_usage(note: CacheNote | None, answer_text: str | None = None) -> dict[str, Any]:
    """The usage event's cache fields for a task whose cache note is ``note``.

    ``answer_text`` is the answer the model gave (workers): in shadow mode it is compared with the
    answer the cache would have served (``shadow_match``), after the same normalisation the
    cache keys use.
    """
    if note is None:
        return {}
    fields: dict[str, Any] = {
        "cache_outcome": note.outcome.value,
        "cache_similarity": note.similarity,
        "cache_shadow": note.shadow,
        "cache_shadow_similarity": note.shadow_similarity,
    }
    if note.outcome in (CacheOutcome.EXACT, CacheOutcome.SEMANTIC):
        fields.update(cache_source_tier=note.source_tier, cache_source_prompt_tokens=note.source_prompt_tokens,
                      cache_source_completion_tokens=note.source_completion_tokens)
    if note.shadow_answer_sha256 is not None and answer_text is not None:
        fields["cache_shadow_match"] = answer_digest(answer_text) == note.shadow_answer_sha256
    return fields


def answer_digest(text: str) -> str:
    """The SHA-256 a shadow lookup and the worker compare answers by (normalised text)."""
    return hashlib.sha256(normalise_text(text).encode()).hexdigest()
