"""The routing slip: how a task envelope moves from stage to stage.

Plain functions decide where an envelope goes; ``StageHop`` performs the hand-off over NATS as
a request (on the request path's lane, ``services.shared.lane``), so that the sender learns at
once whether anybody took the task (NATS answers "no responders" when no replica of the next
stage is subscribed). A bulk task bound for inference is the exception: it is stored in its
tier's JetStream work queue (``SF_BULK``), where workers pull it into the slots chat leaves free.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from faststream.nats import NatsBroker
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.client import JetStreamContext

from contracts.subjects import BULK_STREAM, CACHE_STAGE, INFER_STAGE, Priority, infer_subject, stage_subject
from contracts.v1 import CacheNote, CacheOutcome, HopAck, StageMark, TaskEnvelope
from services.shared import metrics
from services.shared.errors import SkinflintError, Timeout, Unavailable
from services.shared.lane import request_hop, trace_headers

log = logging.getLogger(__name__)


def current_stage(env: TaskEnvelope) -> str | None:
    return env.itinerary[0] if env.itinerary else None


def subject_for(env: TaskEnvelope) -> str:
    """The subject of the stage at the head of the itinerary."""
    stage = current_stage(env)
    if stage is None:
        raise ValueError(f"task {env.request_id} has an empty itinerary: nowhere to send it")
    if stage == INFER_STAGE:
        return infer_subject(env.route.tier, env.priority)
    return stage_subject(stage)


def advance(env: TaskEnvelope) -> TaskEnvelope:
    """The envelope as the next stage should receive it: the current stage is done."""
    return env.model_copy(update={"itinerary": env.itinerary[1:]})


def insert_next(env: TaskEnvelope, *stages: str) -> TaskEnvelope:
    """Visit ``stages`` right after the current one (e.g. retrieval deciding it needs a rerank)."""
    head, rest = env.itinerary[:1], env.itinerary[1:]
    return env.model_copy(update={"itinerary": [*head, *stages, *rest]})


def skip(env: TaskEnvelope, stage: str) -> TaskEnvelope:
    """Drop a later stage from the slip (e.g. the cache answered, no inference needed)."""
    head, rest = env.itinerary[:1], env.itinerary[1:]
    return env.model_copy(update={"itinerary": [*head, *(s for s in rest if s != stage)]})


def is_optional(env: TaskEnvelope, stage: str | None) -> bool:
    """Whether ``stage`` may be skipped on this task (inference never may: it answers)."""
    return stage is not None and stage != INFER_STAGE and stage in env.optional


def skip_current(env: TaskEnvelope, why: str, detail: str) -> TaskEnvelope:
    """The envelope going on without its current (optional) stage, the skip recorded where the
    stages after it, the usage event and the metrics see it. ``why`` is a metric label
    (unavailable, timeout, refused, failed); ``detail`` says what happened."""
    stage = current_stage(env) or "?"
    metrics.STAGE_SKIPS.labels(stage, why).inc()
    nxt = advance(env)
    if stage == CACHE_STAGE:
        nxt.cache = CacheNote(outcome=CacheOutcome.SKIPPED, reason=f"{why}: {detail}")
    else:
        nxt.enrichments[f"skipped.{stage}"] = f"{why}: {detail}"
    return nxt


def with_tier(env: TaskEnvelope, tier: str) -> TaskEnvelope:
    """The envelope sent to ``tier``'s fallback instead: the first unavailable tier is recorded."""
    route = env.route.model_copy(update={"tier": tier, "fallback_from": env.route.fallback_from or env.route.tier})
    return env.model_copy(update={"route": route})


def is_bulk_inference(env: TaskEnvelope) -> bool:
    """Whether ``env`` goes to inference as bulk work: queued in JetStream, not handed to a worker."""
    return current_stage(env) == INFER_STAGE and env.priority is Priority.BULK


#: The acknowledgement of a bulk task stored in its tier's work queue: nobody holds it yet.
QUEUED_INSTANCE = "jetstream"


def mark_arrival(env: TaskEnvelope, stage: str, instance: str) -> None:
    env.marks.append(StageMark(stage=stage, instance=instance, arrived_at=time.time()))


class StageHop:
    """Hands envelopes to the next stage and waits for its acknowledgement.

    A replica that is full answers ``accepted=False, retry=True``; the hop then asks again (the
    queue group picks a replica at random) a bounded number of times before giving up.

    A bulk task for inference is published to JetStream instead (stream ``SF_BULK``, subject
    ``infer_subject(tier, BULK)``, ``Nats-Msg-Id`` = its request id, so a repeated hand-off is
    stored once); its acknowledgement is the stream's (``instance="jetstream"``, ``holds=False``).
    It never falls back to another tier: it waits in the stream for a worker of its own.
    """

    def __init__(self, broker: NatsBroker, *, ack_timeout_s: float = 5.0, busy_retries: int = 8,
                 busy_backoff_s: float = 0.05, optional_ack_timeout_s: float = 0.5,
                 fallbacks: Mapping[str, str] | None = None) -> None:
        self._broker = broker
        #: Tier -> the tier that answers while it is unavailable (``tiers.yaml``: no cycles).
        self._fallbacks = dict(fallbacks or {})
        self._ack_timeout_s = ack_timeout_s
        self._busy_retries = busy_retries
        self._busy_backoff_s = busy_backoff_s
        self._optional_ack_timeout_s = min(optional_ack_timeout_s, ack_timeout_s)
        self._js: JetStreamContext | None = None

    async def deliver(self, env: TaskEnvelope) -> tuple[HopAck, TaskEnvelope]:
        """Deliver ``env`` along its itinerary; returns the acknowledgement and the envelope as
        delivered.

        An optional stage (``env.optional``) that no replica takes at once (none running, none
        acknowledging within ``optional_ack_timeout_s``, all full, or a refusal) is skipped, the
        skip recorded (:func:`skip_current`), and the next stage tried: a lever that is down
        costs savings, never answers. Other stages fail as :meth:`send` says.
        """
        while is_optional(env, current_stage(env)):
            err: SkinflintError
            try:
                return await self.send(env, ack_timeout_s=self._optional_ack_timeout_s, busy_retries=0), env
            except Unavailable as exc:
                why, err = "unavailable", exc
            except Timeout as exc:
                why, err = "timeout", exc
            except SkinflintError as exc:
                why, err = "refused", exc
            log.warning("task %s goes on without stage %r: %s", env.request_id, current_stage(env), err.message)
            env = skip_current(env, why, err.message)
        while True:
            try:
                return await self.send(env), env
            except Unavailable as exc:
                fallback = None
                if current_stage(env) == INFER_STAGE and env.priority is not Priority.BULK:
                    fallback = self._fallbacks.get(env.route.tier)
                if fallback is None:
                    raise
                log.warning("task %s: tier %r is unavailable (%s); its fallback %r answers", env.request_id,
                            env.route.tier, exc.message, fallback)
                metrics.TIER_FALLBACKS.labels(env.route.tier, fallback).inc()
                env = with_tier(env, fallback)

    async def send(self, env: TaskEnvelope, *, ack_timeout_s: float | None = None,
                   busy_retries: int | None = None) -> HopAck:
        """Deliver ``env`` to the stage at the head of its itinerary.

        Raises ``Unavailable`` when no replica of that stage runs or all stay full, ``Timeout``
        when none answers in time, and the stage's own error when it refuses for good. A bulk
        task for inference raises ``Unavailable`` when JetStream does not store it in time.
        """
        stage = current_stage(env) or "?"
        subject = subject_for(env)
        timeout_s = self._ack_timeout_s if ack_timeout_s is None else ack_timeout_s
        if is_bulk_inference(env):
            return await self._enqueue_bulk(env, subject, timeout_s)
        retries = self._busy_retries if busy_retries is None else busy_retries
        for attempt in range(retries + 1):
            try:
                ack = await request_hop(self._broker.connection, subject, env, timeout_s)
            except NoRespondersError as exc:
                raise Unavailable(
                    f"no {stage!r} service is running for subject {subject}; start one and retry"
                ) from exc
            except (NatsTimeoutError, TimeoutError) as exc:
                raise Timeout(f"the {stage!r} stage did not take the task within {timeout_s:.1f} s") from exc
            if ack.accepted:
                return ack
            if not ack.retry:
                reason = ack.reason or f"the {stage!r} stage refused the task"
                if ack.status == 503:
                    raise Unavailable(reason, code="tier_unavailable")
                raise SkinflintError(reason, status=ack.status or 400, code="rejected")
            if attempt < retries:
                await asyncio.sleep(self._busy_backoff_s * (attempt + 1))
        raise Unavailable(f"every {stage!r} replica is at capacity; retry shortly", code="overloaded")

    async def _enqueue_bulk(self, env: TaskEnvelope, subject: str, timeout_s: float) -> HopAck:
        """Store ``env`` in its tier's bulk work queue and wait for JetStream's acknowledgement."""
        if self._js is None:
            self._js = self._broker.connection.jetstream()
        headers = {**(trace_headers() or {}), "Nats-Msg-Id": env.request_id}
        try:
            ack = await self._js.publish(subject, env.model_dump_json().encode(), timeout=timeout_s,
                                         stream=BULK_STREAM.name, headers=headers)
        except (NatsError, TimeoutError) as exc:
            what = f"{type(exc).__name__}: {exc}".rstrip(": ")
            raise Unavailable(
                f"bulk task {env.request_id} could not be queued for tier {env.route.tier!r} "
                f"(stream {BULK_STREAM.name}: {what}); retry shortly"
            ) from exc
        if ack.duplicate:
            log.info("bulk task %s was queued already (stream %s, seq %s)", env.request_id, ack.stream, ack.seq)
        return HopAck(accepted=True, stage=INFER_STAGE, instance=QUEUED_INSTANCE)
