"""The batch service on the bus: four durable consumers and a sweeper around ``BatchRuntime``.

- ``SF_BATCH_START`` (ingress's ``BatchStart``): check a job's input and queue its items;
- ``SF_BULK_IN``, end messages only (``PUBLIC_BULK_END_ALL``): a tenant's bus job becomes a batch;
- ``SF_BATCH_WORK``: items handed to the stages, at most ``batch_max_in_flight`` at once (the
  consumer's ``max_ack_pending``), each acknowledged once its result is stored;
- ``SF_BULK_RESULTS``, batch results only (``BATCH_RESULTS_FILTER``): each stored once, counted
  once, the job closed when it was its last.

Replicas share each consumer; nothing lives only in one replica's memory, so a replica killed at
any point leaves its messages unacknowledged and another (or itself, restarted) carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.client import JetStreamContext

from contracts.subjects import (
    ALL_STREAMS,
    BATCH_BUS_END_DURABLE,
    BATCH_RESULTS_DURABLE,
    BATCH_RESULTS_FILTER,
    BATCH_START_DURABLE,
    BATCH_START_STREAM,
    BATCH_STREAMS,
    BATCH_WORK_DURABLE,
    BATCH_WORK_PREFIX,
    BATCH_WORK_STREAM,
    BULK_IN_STREAM,
    BULK_RESULTS_STREAM,
    PUBLIC_BULK_END_ALL,
)
from contracts.v1 import BatchStart
from services.batch.job_store import JobStore
from services.batch.runtime import BatchRuntime
from services.batch.settings import BatchSettings
from services.batch.store import FileStore
from services.ingress.tenants import TenantsFile
from services.shared.broker import ensure_streams, is_connected, make_broker
from services.shared.deployment import check_tiers
from services.shared.settings import load_config_file
from services.shared.slip import StageHop
from services.shared.telemetry import setup_tracing

log = logging.getLogger(__name__)

#: Seconds a message may go unacknowledged before it is redelivered; handlers that take longer
#: say they are still at it (``in_progress``) well within it.
_START_ACK_WAIT_S = 120.0
_WORK_ACK_WAIT_S = 30.0
_RESULT_ACK_WAIT_S = 30.0


class BatchService:
    name = "batch"

    def __init__(self, settings: BatchSettings) -> None:
        self.settings = settings
        # Checked before anything connects: a wrong config stops start-up (exit 78) naming the key.
        self.tiers = check_tiers(settings.tiers_file, settings.pricebook_file)
        self.tenants = {t.name: t for t in load_config_file(settings.tenants_file, TenantsFile).tenants}
        self.broker = make_broker(self.name, settings, setup_tracing(self.name, settings))
        self.runtime: BatchRuntime | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._work: set[asyncio.Task[None]] = set()
        #: Work messages held by running items, by task (a ``Msg`` is not hashable).
        self._held: dict[asyncio.Task[None], Msg] = {}
        self._stopping = False
        self._room = asyncio.Event()

    async def start(self) -> None:
        await self.broker.start()
        await ensure_streams(self.broker, (*ALL_STREAMS, *BATCH_STREAMS))
        js = self.broker.connection.jetstream()
        files = await FileStore.open(js, max_bytes=self.settings.batch_max_file_bytes)
        jobs = await JobStore.open(js)
        hop = StageHop(self.broker, fallbacks=self.tiers.fallbacks())
        self.runtime = BatchRuntime(self.settings, self.tiers, self.tenants, js, files, jobs, hop,
                                    self.broker.connection.publish)
        runtime = self.runtime
        self._loops = [
            asyncio.create_task(self._consume(
                js, BATCH_START_STREAM.name, BATCH_START_STREAM.subjects[0], BATCH_START_DURABLE,
                _START_ACK_WAIT_S, self._on_start, concurrent=False), name="batch-start"),
            asyncio.create_task(self._consume(
                js, BULK_IN_STREAM.name, PUBLIC_BULK_END_ALL, BATCH_BUS_END_DURABLE, _START_ACK_WAIT_S,
                self._on_bus_end, concurrent=False), name="batch-bus-end"),
            asyncio.create_task(self._consume(
                js, BULK_RESULTS_STREAM.name, BATCH_RESULTS_FILTER, BATCH_RESULTS_DURABLE, _RESULT_ACK_WAIT_S,
                self._on_result, concurrent=False), name="batch-results"),
            asyncio.create_task(self._consume(
                js, BATCH_WORK_STREAM.name, f"{BATCH_WORK_PREFIX}.>", BATCH_WORK_DURABLE, _WORK_ACK_WAIT_S,
                runtime.on_work, concurrent=True), name="batch-work"),
            asyncio.create_task(self._sweep(), name="batch-sweep"),
        ]
        log.info("batch service ready: %d items in flight at most, pipeline %s", self.settings.batch_max_in_flight,
                 "/".join(self.settings.pipeline))

    # -- handlers wrapped for the consumers ------------------------------------------------------

    async def _on_start(self, msg: Msg) -> None:
        assert self.runtime is not None
        start = BatchStart.model_validate_json(msg.data)
        await self.runtime.starter.start_job(start.tenant, start.batch_id, msg.in_progress)

    async def _on_bus_end(self, msg: Msg) -> None:
        assert self.runtime is not None
        await self.runtime.starter.on_bus_end(msg.subject, msg.data, msg.metadata.sequence.stream, msg.in_progress)

    async def _on_result(self, msg: Msg) -> None:
        assert self.runtime is not None
        await self.runtime.on_result(msg.subject, msg.data)

    # -- consumers ---------------------------------------------------------------------------------

    async def _consume(self, js: JetStreamContext, stream: str, subject: str, durable: str, ack_wait_s: float,
                       handler: Callable[[Msg], Awaitable[None]], *, concurrent: bool) -> None:
        """Pull from a durable consumer until stopped. Sequential handlers acknowledge after
        handling (a failure leaves the message for redelivery); concurrent ones (the work) decide
        themselves, at most ``batch_max_in_flight`` at once."""
        window = self.settings.batch_max_in_flight if concurrent else 1
        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait_s, max_ack_pending=window,
                                max_deliver=-1)
        while not self._stopping:
            try:
                psub = await js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
                break
            except Exception:
                log.exception("could not bind the %s consumer; retrying", durable)
                await asyncio.sleep(1.0)
        else:
            return
        try:
            while not self._stopping:
                room = window - len(self._work) if concurrent else 1
                if room <= 0:
                    self._room.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._room.wait(), timeout=1.0)
                    continue
                try:
                    # One at a time: nats-py's fetch(n) on an empty consumer waits until n messages
                    # came or the timeout passed, so a larger n would hold each result up to 1 s.
                    msgs = await psub.fetch(1, timeout=1.0)
                except TimeoutError:
                    continue
                except Exception:
                    if not self._stopping:
                        log.warning("fetching from %s failed; retrying", durable, exc_info=True)
                        await asyncio.sleep(1.0)
                    continue
                for msg in msgs:
                    if concurrent:
                        self._spawn(handler, msg)
                    else:
                        await self._handle(handler, msg)
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def _handle(self, handler: Callable[[Msg], Awaitable[None]], msg: Msg) -> None:
        try:
            await handler(msg)
        except Exception:
            log.exception("handling %s failed; it will be redelivered", msg.subject)
            with contextlib.suppress(Exception):
                await msg.nak(delay=5.0)
            return
        with contextlib.suppress(Exception):
            await msg.ack()

    def _spawn(self, handler: Callable[[Msg], Awaitable[None]], msg: Msg) -> None:
        async def run() -> None:
            try:
                await handler(msg)
            except Exception:
                log.exception("an item on %s failed; it will be redelivered", msg.subject)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=5.0)

        task = asyncio.create_task(run())
        self._work.add(task)
        self._held[task] = msg

        def done(t: asyncio.Task[None]) -> None:
            self._work.discard(t)
            self._held.pop(t, None)
            self._room.set()

        task.add_done_callback(done)

    async def _sweep(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.settings.batch_sweep_interval_s)
            if self.runtime is None or not is_connected(self.broker):
                continue
            try:
                await self.runtime.sweep()
            except Exception:
                log.warning("the batch sweep failed; trying again", exc_info=True)

    # -- Service -----------------------------------------------------------------------------------

    def ready(self) -> tuple[bool, dict[str, Any]]:
        connected = is_connected(self.broker)
        in_flight = sum(self.runtime.in_flight.values()) if self.runtime is not None else 0
        return connected and self.runtime is not None, {"bus": connected, "items_in_flight": in_flight}

    async def drain(self) -> None:
        """Stop taking messages. Items waiting for their result are handed back at once (another
        replica takes them; the bulk stream drops the copy it already holds)."""
        self._stopping = True
        held = list(self._held.values())
        for task in list(self._work):
            task.cancel()
        for msg in held:
            with contextlib.suppress(Exception):
                await msg.nak()
        await asyncio.gather(*self._loops, *self._work, return_exceptions=True)

    async def close(self) -> None:
        self._stopping = True
        for task in [*self._loops, *self._work]:
            task.cancel()
        await asyncio.gather(*self._loops, *self._work, return_exceptions=True)
        await self.broker.stop()
