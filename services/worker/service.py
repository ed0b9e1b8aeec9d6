"""The worker on the bus: interactive tasks over core NATS, bulk tasks pulled from JetStream.

Interactive hand-offs and their replies travel on the request path's lane (raw nats-py, see
``services.shared.lane``); bulk results, usage events and cancels go through FastStream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.client import JetStreamContext
from opentelemetry import trace
from pydantic import ValidationError

from contracts.subjects import (
    BULK_RESULTS_STREAM,
    BULK_STREAM,
    CANCEL_SUBJECT,
    HEARTBEAT_SUBJECT,
    INFER_STAGE,
    USAGE_STREAM,
    WORKER_QUEUE_GROUP,
    Priority,
    bulk_durable,
    cache_verdict_subject,
    infer_subject,
)
from contracts.v1 import (
    Accepted,
    CacheVerdict,
    CancelRequest,
    HopAck,
    TaskEnvelope,
    WorkerHeartbeat,
)
from services.shared import lane, metrics
from services.shared.broker import ensure_streams, is_connected, make_broker
from services.shared.deployment import check_priced, load_pricebook
from services.shared.settings import env_name
from services.shared.slip import mark_arrival
from services.shared.telemetry import setup_tracing
from services.shared.tiers import load_tiers
from services.shared.validation import summary
from services.worker.backend import Backend, EngineBackend, WorkerIdentity
from services.worker.capacity import Capacity
from services.worker.cascade import HandOn
from services.worker.engine import Engine
from services.worker.generation import VerdictGate, answer
from services.worker.settings import WorkerSettings
from services.worker.sink import BusSink
from services.worker.tier import resolve_tier

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


class WorkerService:
    """One tier's worker: a model on one device (a self-hosted tier), or the forwarder to a
    provider (an upstream tier; ``services.worker.upstream``). See ``Capacity`` for what it admits.

    ``engine_factory`` (tests) builds a self-hosted tier's engine instead of vLLM."""

    name = "worker"

    def __init__(self, settings: WorkerSettings,
                 engine_factory: Callable[[WorkerSettings], Engine] | None = None) -> None:
        # Checked before the engine loads or anything connects (exit 78 on a mistake).
        check_priced({env_name("tier"): settings.tier}, load_pricebook(settings.pricebook_file),
                     settings.pricebook_file)
        self.served = resolve_tier(settings)
        self.settings = settings = self.served.settings
        self._engine_factory = engine_factory
        #: What answers the tasks (created in ``start``); ``engine`` is a self-hosted tier's engine.
        self.backend: Backend[Any] | None = None
        self.engine: Engine | None = None
        provider = setup_tracing(self.name, settings)
        self.broker = make_broker(self.name, settings, provider)
        self.sink = BusSink(self.broker, settings.usage_ack_timeout_s)
        self.capacity = Capacity(settings.max_num_seqs, settings.max_waiting, settings.interactive_reserve,
                                 bulk_with_chat=settings.bulk_slots_with_chat, chat_quiet_s=settings.chat_quiet_s)
        #: Bulk tasks running, by request id: when each started (the latest are preempted first).
        self._bulk_started: dict[str, float] = {}
        self.identity = WorkerIdentity(settings.instance_id, settings.tier, settings.model_name,
                                       settings.default_max_tokens)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: Where a task goes when this tier cannot answer it (the cascade, the tier's fallback).
        self.hand_on = HandOn.for_tier(settings.tier, load_tiers(settings.tiers_file), self.broker)
        self._draining = False
        self._freed = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._interactive: Subscription | None = None
        #: Tasks the cache handed on before deciding, waiting for its verdict (see ``VerdictGate``).
        self._verdicts: dict[str, asyncio.Future[CacheVerdict]] = {}
        self.broker.subscriber(CANCEL_SUBJECT, title="cancel")(self.on_cancel)
        metrics.ENGINE_SLOTS.labels(settings.tier).set(self.capacity.slots)
        # Read off the admission counts when scraped, rather than kept beside them.
        in_use = metrics.ENGINE_SLOTS_IN_USE
        in_use.labels(settings.tier, Priority.INTERACTIVE.value).set_function(lambda: self.capacity.interactive)
        in_use.labels(settings.tier, Priority.BULK.value).set_function(lambda: self.capacity.bulk)

    # --- handlers -------------------------------------------------------------------------
    async def on_task(self, env: TaskEnvelope) -> HopAck:
        """Take an interactive task if there is room; the generation runs in the background."""
        if self._draining or self.backend is None or not self.capacity.can_admit_interactive():
            return self._refusal("draining" if self._draining else "at capacity", retry=True)
        down = self.backend.unavailable()
        if down is not None:
            # Refused for good, at once: the sender answers 503 or tries the tier's fallback.
            return HopAck(accepted=False, stage=INFER_STAGE, instance=self.identity.worker_id, reason=down,
                          retry=False, status=503)
        # Sent by ingress itself, the hop ack tells it who holds the task; after other stages,
        # ingress learns it from an Accepted reply.
        announce = bool(env.marks)
        if env.cache_pending:
            # Before the ack: the cache sends its verdict only once the ack has reached it.
            self._verdicts[env.request_id] = asyncio.get_running_loop().create_future()
        now = time.monotonic()
        self.capacity.chat_arrived(now)
        self._start(env, Priority.INTERACTIVE, queued_at=now, announce=announce)
        self._preempt_bulk(now)
        # Let the new task render the prompt and hand it to the engine before the acknowledgement
        # goes out: sending the ack wakes nats-server and ingress, which, where they share cores
        # with this process, would otherwise run first and hold up the start of generation.
        # Nobody waits for the ack but ingress's hop timeout; everybody waits for the answer.
        await asyncio.sleep(0)
        return HopAck(accepted=True, stage=INFER_STAGE, instance=self.identity.worker_id, holds=True)

    def _refusal(self, reason: str, retry: bool = False) -> HopAck:
        return HopAck(accepted=False, stage=INFER_STAGE, instance=self.identity.worker_id, reason=reason,
                      retry=retry)

    async def _on_verdict_msg(self, msg: Msg) -> None:
        try:
            verdict = CacheVerdict.model_validate_json(msg.data)
        except ValidationError:
            log.warning("ignoring a malformed cache verdict")
            return
        waiting = self._verdicts.get(verdict.request_id)
        if waiting is not None and not waiting.done():
            waiting.set_result(verdict)

    async def on_cancel(self, msg: CancelRequest) -> None:
        task = self._tasks.get(msg.request_id)
        if task is not None:
            log.info("cancelling %s: the client went away", msg.request_id)
            task.cancel()

    def _preempt_bulk(self, now: float) -> None:
        """Chat became active: hand back the bulk tasks over its limit, the latest started first
        (the least work lost). Each goes back to its queue unanswered and uncharged (``answer``
        reports no usage for a cancelled bulk task) and runs again later."""
        excess = self.capacity.bulk_excess(now)
        if excess <= 0:
            return
        latest = sorted(self._bulk_started, key=self._bulk_started.__getitem__, reverse=True)[:excess]
        for request_id in latest:
            task = self._tasks.get(request_id)
            if task is not None and not task.done():
                self._bulk_started.pop(request_id, None)
                task.cancel()
                metrics.BULK_PREEMPTIONS.labels(self.settings.tier).inc()
        log.info("chat arrived: %d bulk tasks handed back to the queue", len(latest))

    # --- task lifecycle -------------------------------------------------------------------
    def _start(self, env: TaskEnvelope, priority: Priority, queued_at: float,
               on_done: Callable[[bool], object] | None = None, announce: bool = False) -> None:
        self.capacity.take(priority)
        mark_arrival(env, INFER_STAGE, self.identity.worker_id)
        task = asyncio.create_task(self._run(env, queued_at, on_done, announce), name=f"task-{env.request_id}")
        self._tasks[env.request_id] = task

        if priority is Priority.BULK:
            self._bulk_started[env.request_id] = time.monotonic()

        def _finished(_: asyncio.Task[None]) -> None:
            self._tasks.pop(env.request_id, None)
            self._bulk_started.pop(env.request_id, None)
            self._verdicts.pop(env.request_id, None)
            self.capacity.release(priority)
            self._freed.set()

        task.add_done_callback(_finished)

    async def _run(self, env: TaskEnvelope, queued_at: float,
                   on_done: Callable[[bool], object] | None, announce: bool) -> None:
        """Answer one task. ``answer`` itself sends exactly one last reply and one usage event
        whatever fails; what can still raise here is the bus itself (the reply could not be sent),
        and then a bulk task is left unacknowledged for another attempt."""
        assert self.backend is not None
        ok = False
        try:
            if announce:
                try:
                    await lane.publish(self.broker.connection, env.reply_subject,
                                       Accepted(request_id=env.request_id, stage=INFER_STAGE,
                                                instance=self.identity.worker_id, cache=env.cache,
                                                tier=self.identity.tier, model=self.identity.model_name))
                except Exception:
                    log.warning("could not tell ingress that %s is taken; answering anyway", env.request_id)
            with tracer.start_as_current_span(f"infer {self.identity.tier}", attributes={
                    "sf.request_id": env.request_id, "sf.priority": env.priority.value}):
                verdict = self._verdicts.get(env.request_id)
                gate = None if verdict is None else VerdictGate(
                    verdict, self.settings.cache_verdict_timeout_s, self.identity.worker_id)
                await answer(env, self.backend, self.sink, self.identity,
                             queue_seconds=time.monotonic() - queued_at, gate=gate, hand_on=self.hand_on)
            ok = True
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("request %s: its answer could not be sent", env.request_id)
        finally:
            if on_done is not None:
                result = on_done(ok)
                if asyncio.iscoroutine(result):
                    await asyncio.shield(result)

    # --- bulk -----------------------------------------------------------------------------
    async def _bulk_loop(self) -> None:
        """Pull bulk tasks only into free slots (minus the interactive reserve)."""
        s = self.settings
        js = self.broker.connection.jetstream()
        psub = await js.pull_subscribe(
            infer_subject(s.tier, Priority.BULK),
            durable=bulk_durable(s.tier),
            stream=BULK_STREAM.name,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=s.bulk_ack_wait_s,
                                  max_deliver=s.bulk_max_deliveries, max_ack_pending=10_000),
        )
        try:
            while not self._draining:
                await self._pull_bulk(psub)
        finally:
            # A pull subscription left behind makes the connection's drain wait out its timeout.
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def _pull_bulk(self, psub: JetStreamContext.PullSubscription) -> None:
        room = self.capacity.bulk_room(time.monotonic())
        if self.backend is not None and self.backend.unavailable() is not None:
            room = 0  # bulk work waits in its stream while the provider is down
        if room == 0:
            self._freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), timeout=1.0)
            return
        try:
            # One per pull (the loop comes back while there is room): nats-py's fetch(n) waits for
            # all n, or its timeout, when fewer are queued, which would hold a task up to 1 s.
            msgs = await psub.fetch(1, timeout=1.0)
        except TimeoutError:
            return
        except Exception:
            if not self._draining:
                log.exception("bulk fetch failed; retrying")
                await asyncio.sleep(1.0)
            return
        for msg in msgs:
            await self._take_bulk(msg)

    async def _take_bulk(self, msg: Msg) -> None:
        try:
            env = TaskEnvelope.model_validate_json(msg.data)
        except ValidationError as exc:
            log.error("dropping a malformed bulk task: %s", summary(exc, limit=3))
            await msg.term()
            return
        if env.priority is not Priority.BULK:
            env = env.model_copy(update={"priority": Priority.BULK})
        keepalive = asyncio.create_task(self._keep_in_progress(msg))

        async def done(ok: bool) -> None:
            keepalive.cancel()
            # Acknowledge only once the result is stored; otherwise let another worker retry.
            if ok:
                await msg.ack()
            else:
                await msg.nak(delay=2.0)

        self._start(env, Priority.BULK, queued_at=time.monotonic(), on_done=done)

    async def _keep_in_progress(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self.settings.bulk_ack_wait_s / 3)
            await msg.in_progress()

    # --- heartbeats -----------------------------------------------------------------------
    def heartbeat(self) -> WorkerHeartbeat:
        return WorkerHeartbeat(
            worker_id=self.identity.worker_id, tier=self.settings.tier, model=self.settings.model_name,
            slots=self.capacity.slots, inflight_interactive=self.capacity.interactive,
            inflight_bulk=self.capacity.bulk, draining=self._draining, sent_at=time.time(),
            interval_s=self.settings.heartbeat_interval_s,
        )

    async def _heartbeat_loop(self) -> None:
        # Raw publish: a span per heartbeat would bury the request traces.
        while True:
            try:
                await self.broker.connection.publish(
                    HEARTBEAT_SUBJECT, self.heartbeat().model_dump_json().encode()
                )
            except Exception:
                log.warning("heartbeat not sent (bus unavailable?)")
            await self._measure_backlog()
            await asyncio.sleep(self.settings.heartbeat_interval_s)

    async def _measure_backlog(self) -> None:
        """The tier's bulk tasks not yet pulled by any worker, for the backlog gauge."""
        if not self.settings.bulk_enabled:
            return
        try:
            js = self.broker.connection.jetstream()
            info = await js.consumer_info(BULK_STREAM.name, bulk_durable(self.settings.tier))
        except Exception:
            return  # the consumer is not created yet, or the bus is away: keep the last value
        metrics.BULK_BACKLOG.labels(self.settings.tier).set(info.num_pending or 0)

    def ready(self) -> tuple[bool, dict[str, object]]:
        connected = is_connected(self.broker)
        ready = connected and self.backend is not None and not self._draining
        details: dict[str, object] = {
            "bus": connected, "tier": self.settings.tier, "kind": self.served.config.kind,
            "model": self.settings.model_name, "slots": self.capacity.slots,
            "inflight_interactive": self.capacity.interactive, "inflight_bulk": self.capacity.bulk}
        down = self.backend.unavailable() if self.backend is not None else None
        if down is not None:
            details["provider"] = down  # still ready: the worker refuses the tier's tasks at once
        return ready, details

    # --- Service --------------------------------------------------------------------------
    def _make_backend(self) -> Backend[Any]:
        upstream = self.served.config.upstream
        if upstream is not None:
            # No vLLM import on this path: an upstream worker starts in a second.
            from services.worker.upstream import UpstreamBackend

            log.info("forwarding tier %r to %s (model %s)", self.settings.tier, upstream.base_url, upstream.model)
            return UpstreamBackend(self.settings.tier, upstream, self.served.api_key)
        if self._engine_factory is not None:
            self.engine = self._engine_factory(self.settings)
        else:
            from services.worker.engine import VllmEngine

            log.info("loading %s from %s", self.settings.model_name, self.settings.model_path)
            self.engine = VllmEngine(self.settings)
        return EngineBackend(self.engine)

    async def start(self) -> None:
        self.backend = self._make_backend()
        await self.broker.start()
        await ensure_streams(self.broker, (USAGE_STREAM, BULK_STREAM, BULK_RESULTS_STREAM))
        await self.broker.connection.subscribe(cache_verdict_subject(self.identity.worker_id), cb=self._on_verdict_msg)
        self._interactive = await lane.serve_hops(
            self.broker.connection, infer_subject(self.settings.tier, Priority.INTERACTIVE), WORKER_QUEUE_GROUP,
            self.on_task, self._refusal)
        self.sink.usage_publisher.start()
        self._background.append(asyncio.create_task(self._heartbeat_loop()))
        if self.settings.bulk_enabled:
            self._background.append(asyncio.create_task(self._bulk_loop()))
        log.info("serving tier %r as %s (%d slots)", self.settings.tier, self.identity.worker_id,
                 self.capacity.slots)

    async def drain(self) -> None:
        self._draining = True
        if self._interactive is not None:
            await self._interactive.unsubscribe()
        with contextlib.suppress(Exception):
            await self.broker.connection.publish(
                HEARTBEAT_SUBJECT, self.heartbeat().model_dump_json().encode()
            )
        if self._tasks:
            log.info("waiting for %d requests to finish", len(self._tasks))
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self.sink.usage_publisher.stop()

    async def close(self) -> None:
        self._draining = True
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self.sink.usage_publisher.stop()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.broker.stop()
        if self.backend is not None:
            await self.backend.close()
