"""A stage on the routing slip: take the task, do the work, forward it or answer.

Stage services (cache, classifier, retrieval) hand their plain logic to a ``StageRunner``;
the hand-off protocol lives here once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from faststream.nats import NatsBroker
from nats.aio.subscription import Subscription
from nats.js.client import JetStreamContext

from contracts.subjects import BULK_RESULTS_STREAM, Priority, cache_verdict_subject, stage_queue_group, stage_subject
from contracts.v1 import CacheNote, CacheOutcome, CacheVerdict, ErrorReply, Final, HopAck, TaskEnvelope
from services.shared import lane, metrics
from services.shared.errors import SkinflintError, is_transient
from services.shared.slip import StageHop, advance, current_stage, is_optional, mark_arrival, skip_current
from services.shared.usage import UsagePublisher, answered_without_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Forward:
    """Continue along the slip with this envelope (enriched, maybe with stages added/skipped)."""

    env: TaskEnvelope
    #: ``env`` already has this stage taken off its itinerary.
    advanced: bool = False


@dataclass(frozen=True)
class Finish:
    """Answer now (a cache hit, a direct answer from the knowledge base, a refusal)."""

    reply: Final | ErrorReply


#: How long an ``Overlap`` lets the hand-off run alone before deciding: until the next stage has
#: taken the task, at most this long (a hand-off waiting for a free worker must not hold up an
#: answer the decision may find).
OVERLAP_HEAD_START_S = 0.005


@dataclass(frozen=True)
class Overlap:
    """Hand the task on now and decide meanwhile (the cache: a semantic lookup runs while the
    model starts on the question).

    ``env`` goes to the next stage at once, marked ``cache_pending``: its holder sends nothing until
    it hears the verdict. ``decide`` ends in a ``Finish`` (this stage answers; the holder drops its
    work unsent and uncharged) or a ``Forward`` (the holder answers, with that envelope's cache note
    and query embedding). Only for a next stage that holds tasks (inference).
    """

    env: TaskEnvelope
    decide: Coroutine[Any, Any, Forward | Finish]


StageLogic = Callable[[TaskEnvelope], Awaitable[Forward | Finish | Overlap]]
Outcome = TypeVar("Outcome", Forward | Finish, Forward | Finish | Overlap)


class StageRunner:
    """Runs ``logic`` for every task the stage receives.

    The hop is acknowledged at once; the work then runs in the background, so a slow stage never
    holds up the sender. Whatever happens, the task ends in exactly one of: forwarded to the next
    stage, a reply on its reply subject. ``start`` subscribes (after the broker is connected);
    ``drain`` stops taking tasks and waits for those taken.
    """

    def __init__(self, broker: NatsBroker, name: str, instance_id: str, logic: StageLogic,
                 hop: StageHop | None = None) -> None:
        self.name = name
        self.instance_id = instance_id
        self._broker = broker
        self._logic = logic
        self._hop = hop or StageHop(broker)
        self._usage = UsagePublisher(broker)
        self._js: JetStreamContext | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._usage.start()
        self._subscription = await lane.serve_hops(
            self._broker.connection, stage_subject(self.name), stage_queue_group(self.name), self.on_task,
            lambda reason: HopAck(accepted=False, stage=self.name, instance=self.instance_id, retry=False,
                                  reason=reason))

    async def on_task(self, env: TaskEnvelope) -> HopAck:
        if current_stage(env) != self.name:
            return HopAck(accepted=False, stage=self.name, instance=self.instance_id, retry=False,
                          reason=f"task is for stage {current_stage(env)!r}, not {self.name!r}")
        mark_arrival(env, self.name, self.instance_id)
        task = asyncio.create_task(self._process(env))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return HopAck(accepted=True, stage=self.name, instance=self.instance_id)

    async def _process(self, env: TaskEnvelope) -> None:
        """Run the logic, then forward or answer. An optional stage whose logic fails passes the
        task on untouched (the skip recorded) instead of failing the request."""
        try:
            outcome = await self._decided(env, self._logic(env))
            if isinstance(outcome, Overlap) and env.priority is Priority.BULK:
                # Nobody holds a bulk task to wait for a verdict (it is queued in JetStream): decide first.
                outcome = await self._decided(env, outcome.decide)
            if isinstance(outcome, Overlap):
                await self._overlap(env, outcome)
                return
            if isinstance(outcome, Finish):
                await self._finish(env, outcome)
                return
            nxt = outcome.env if outcome.advanced else advance(outcome.env)
            if current_stage(nxt) is None:
                raise SkinflintError(f"stage {self.name!r} forwarded a task with nowhere left to go")
            await self._hop.deliver(nxt)
            metrics.STAGE_OUTCOMES.labels(self.name, env.priority.value, "forwarded").inc()
        except SkinflintError as exc:
            await self._end(env, exc.to_reply(env.request_id), "error")
        except Exception:
            log.exception("stage %s failed on %s", self.name, env.request_id)
            await self._end(env, SkinflintError(
                f"stage {self.name!r} failed; logged with request id {env.request_id}").to_reply(env.request_id),
                "error")

    async def _overlap(self, env: TaskEnvelope, outcome: Overlap) -> None:
        """Hand ``outcome.env`` on while ``outcome.decide`` runs; then answer or let the holder answer.

        An answer the decision finds is served as soon as it is found, even while the hand-off
        still waits for a free worker, and also when no worker takes the task at all."""
        delivery = asyncio.create_task(self._hop.deliver(advance(outcome.env)))
        # The hand-off goes first: the decision's work (an embedding: CPU, in a thread) would
        # otherwise hold up the message the client's answer waits for. The decision still has the
        # model's whole time to first token to finish in.
        await asyncio.wait({delivery}, timeout=OVERLAP_HEAD_START_S)
        decision = asyncio.create_task(self._decided(env, outcome.decide))
        await asyncio.wait({decision, delivery}, return_when=asyncio.FIRST_COMPLETED)
        early = decision.result() if decision.done() else None
        answered = isinstance(early, Finish)
        if isinstance(early, Finish):
            await self._finish(env, early)
        try:
            ack, _ = await delivery
        except SkinflintError:
            if answered:
                return  # nobody holds the task, and the client has its answer
            if isinstance(result := await decision, Finish):
                await self._finish(env, result)
                return
            raise
        result = await decision
        if isinstance(result, Finish):
            if not answered:
                await self._finish(env, result)
            note = result.reply.cache if isinstance(result.reply, Final) else None
            verdict = CacheVerdict(request_id=env.request_id, serve=True,
                                   note=note or CacheNote(outcome=CacheOutcome.MISS))
        else:
            metrics.STAGE_OUTCOMES.labels(self.name, env.priority.value, "forwarded").inc()
            verdict = CacheVerdict(request_id=env.request_id, serve=False,
                                   note=result.env.cache or CacheNote(outcome=CacheOutcome.MISS),
                                   query_embedding=result.env.query_embedding)
        try:
            await lane.publish(self._broker.connection, cache_verdict_subject(ack.instance), verdict)
        except Exception:
            # The holder goes on after its own wait for the verdict; the client still gets one answer.
            log.exception("the verdict on %s could not be sent to %s", env.request_id, ack.instance)

    async def _finish(self, env: TaskEnvelope, finish: Finish) -> None:
        await self._end(env, finish.reply, "answered" if isinstance(finish.reply, Final) else "error")

    async def _decided(self, env: TaskEnvelope, decide: Awaitable[Outcome]) -> Outcome | Forward:
        """The decision, or, when it failed on an optional stage, the task going on without it."""
        try:
            return await decide
        except Exception as exc:
            if not is_optional(env, self.name):
                raise
            log.exception("optional stage %s failed on %s; it goes on without it", self.name, env.request_id)
            return Forward(skip_current(env, "failed", f"{type(exc).__name__}: {exc}"[:200]), advanced=True)

    async def _end(self, env: TaskEnvelope, reply: Final | ErrorReply, outcome: str) -> None:
        """This stage ends the task: its one usage event first, then the reply (see ``UsagePublisher``).

        A bulk task's reply is its result: stored in JetStream (``SF_BULK_RESULTS``, stored once
        by its message id, as a worker stores it), after its usage event is stored."""
        metrics.STAGE_OUTCOMES.labels(self.name, env.priority.value, outcome).inc()
        bulk = env.priority is Priority.BULK
        if bulk and is_transient(reply):
            # Nothing ran and nothing is charged: its sender hands the item on again. No usage
            # event and no result under the item's id, which would make its real ones duplicates.
            await self._store_result(env, reply, msg_id=f"retry-{env.request_id}-{time.time_ns()}")
            return
        try:
            await self._usage.publish(answered_without_model(env, reply, self.instance_id), wait_stored=bulk)
        except Exception:
            log.exception("usage event of %s could not be sent", env.request_id)
        if bulk:
            await self._store_result(env, reply)
        else:
            await lane.publish(self._broker.connection, env.reply_subject, reply)

    async def _store_result(self, env: TaskEnvelope, reply: Final | ErrorReply, msg_id: str | None = None) -> None:
        """A bulk task's result into ``SF_BULK_RESULTS``. Not stored (JetStream down): logged; the
        task's sender sees no result and hands the item on again (the one layer that retries)."""
        if self._js is None:
            self._js = self._broker.connection.jetstream()
        headers = {**(lane.trace_headers() or {}), "Nats-Msg-Id": msg_id or f"result-{env.request_id}"}
        try:
            await self._js.publish(env.reply_subject, reply.model_dump_json().encode(),
                                   stream=BULK_RESULTS_STREAM.name, headers=headers)
        except Exception:
            log.exception("the result of bulk task %s could not be stored", env.request_id)

    async def drain(self) -> None:
        """Stop taking tasks and finish those taken; a second call does nothing more."""
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            await subscription.unsubscribe()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._usage.stop()
