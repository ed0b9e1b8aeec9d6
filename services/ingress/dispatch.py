"""The ingress's side of the bus: hand tasks to the first stage and collect their replies.

Hand-offs and replies travel on the request path's lane (raw nats-py, ``services.shared.lane``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field

from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from pydantic import ValidationError

from contracts.subjects import CANCEL_SUBJECT, HEARTBEAT_SUBJECT, reply_wildcard
from contracts.v1 import (
    Accepted,
    CacheNote,
    CancelRequest,
    Chunk,
    ErrorReply,
    Final,
    PathTimings,
    TaskEnvelope,
    WorkerHeartbeat,
)
from services.shared import lane
from services.shared.errors import SkinflintError, Timeout, Unavailable
from services.shared.slip import StageHop

log = logging.getLogger(__name__)


class WorkerRegistry:
    """Last heartbeat of every worker seen, to tell a dead worker from a slow one."""

    def __init__(self, liveness_s: float) -> None:
        self.liveness_s = liveness_s
        self._seen: dict[str, WorkerHeartbeat] = {}
        self._seen_at: dict[str, float] = {}

    def record(self, beat: WorkerHeartbeat) -> None:
        self._seen[beat.worker_id] = beat
        self._seen_at[beat.worker_id] = time.monotonic()

    def last_seen(self, worker_id: str) -> float | None:
        return self._seen_at.get(worker_id)

    def live(self) -> list[WorkerHeartbeat]:
        now = time.monotonic()
        return [b for w, b in self._seen.items() if now - self._seen_at[w] <= self.liveness_s]


@dataclass
class Inflight:
    """One request waiting for its replies."""

    env: TaskEnvelope
    queue: asyncio.Queue[Chunk | Final | ErrorReply | CacheNote | Accepted] = field(default_factory=asyncio.Queue)
    holder: str | None = None
    holder_since: float = 0.0
    handed_off_at: float | None = None


#: The phases of skinflint's own time on one answer's path, as (name, from mark, to mark).
PHASES = (
    ("ingress_in", "request_at", "handed_off_at"),
    ("to_worker", "handed_off_at", "arrived_at"),
    ("worker_in", "arrived_at", "engine_started_at"),
    ("worker_out", "engine_finished_at", "sent_at"),
    ("to_ingress", "sent_at", "received_at"),
    ("ingress_out", "received_at", "response_at"),
)


def phases_ms(timings: PathTimings | None, request_at: float, response_at: float) -> dict[str, float]:
    """Milliseconds spent in each phase of ``PHASES`` whose two marks are known.

    ``request_at`` and ``response_at`` are the ingress's own marks (Unix time) for the request's
    arrival and its answer being ready. Together with the engine's time and the client's upload,
    the phases add up to the request's whole time in the ingress.
    """
    marks: dict[str, float | None] = {"request_at": request_at, "response_at": response_at,
                                      **(timings.model_dump() if timings is not None else {})}
    spans: dict[str, float] = {}
    for name, start, end in PHASES:
        begin, finish = marks.get(start), marks.get(end)
        if begin is not None and finish is not None:
            spans[name] = (finish - begin) * 1000
    return spans


class Dispatcher:
    """Submits envelopes and yields their replies, failing fast when the holder dies.

    Contract of ``replies``: it yields a ``CacheNote`` when the request passed the cache stage
    (at most one, before any text), an ``Accepted`` naming the tier once the task's holder is
    known (before any text), ``Chunk`` messages (streaming only), and ends with exactly one
    ``Final``; every failure, including timeouts and dead workers, is raised as a
    ``SkinflintError`` carrying the HTTP status to answer with.
    """

    def __init__(self, broker: NatsBroker, instance_id: str, *, hop_timeout_s: float,
                 liveness_s: float, optional_hop_timeout_s: float = 0.5,
                 fallbacks: Mapping[str, str] | None = None) -> None:
        self.broker = broker
        self.instance_id = instance_id
        self.hop = StageHop(broker, ack_timeout_s=hop_timeout_s, optional_ack_timeout_s=optional_hop_timeout_s,
                            fallbacks=fallbacks)
        self.workers = WorkerRegistry(liveness_s)
        self._inflight: dict[str, Inflight] = {}

    async def connect(self) -> None:
        """Subscribe to this instance's replies and to heartbeats; call after the broker started.

        Both bypass FastStream: replies are on the request path, and a span per heartbeat would
        bury the request traces.
        """
        await lane.subscribe_replies(self.broker.connection, reply_wildcard(self.instance_id), self._on_reply)
        await self.broker.connection.subscribe(HEARTBEAT_SUBJECT, cb=self._on_heartbeat)

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            self.workers.record(WorkerHeartbeat.model_validate_json(msg.data))
        except ValidationError:
            log.warning("ignoring a malformed heartbeat")

    def _on_reply(self, reply: lane.Reply) -> None:
        entry = self._inflight.get(reply.request_id)
        if entry is None:
            return  # the client gave up already
        if isinstance(reply, Accepted):
            entry.holder, entry.holder_since = reply.instance, time.monotonic()
            if reply.cache is not None:
                entry.queue.put_nowait(reply.cache)
            if reply.tier is not None:
                entry.queue.put_nowait(reply)
            return
        if isinstance(reply, Final):
            timings = reply.timings or PathTimings()
            timings.handed_off_at, timings.received_at = entry.handed_off_at, time.time()
            reply.timings = timings
        entry.queue.put_nowait(reply)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def replies(self, env: TaskEnvelope,
                      timeout_s: float) -> AsyncGenerator[CacheNote | Accepted | Chunk | Final, None]:
        entry = Inflight(env)
        self._inflight[env.request_id] = entry
        deadline = time.monotonic() + timeout_s
        finished = False
        try:
            entry.handed_off_at = time.time()
            ack, delivered = await self.hop.deliver(env)
            if delivered.cache is not None and delivered.cache is not env.cache:
                yield delivered.cache  # an optional cache stage was skipped on the way
            if ack.holds:
                # The first stage itself holds the task for long (inference): watch its heartbeats.
                # A holder further down the slip names itself with an Accepted reply instead.
                entry.holder, entry.holder_since = ack.instance, time.monotonic()
                yield Accepted(request_id=env.request_id, stage=ack.stage, instance=ack.instance,
                               tier=delivered.route.tier)
            while True:
                reply = await self._next(entry, deadline, timeout_s)
                if isinstance(reply, ErrorReply):
                    finished = True
                    raise SkinflintError.from_reply(reply)
                if isinstance(reply, Final):
                    # Set before yielding: the consumer may close this generator at the yield.
                    finished = True
                    yield reply
                    return
                yield reply
        finally:
            self._inflight.pop(env.request_id, None)
            if not finished:
                # Client gone, timeout or dead worker: free the engine slot if anyone holds it.
                with contextlib.suppress(Exception):
                    await self.broker.publish(CancelRequest(request_id=env.request_id), CANCEL_SUBJECT)

    async def _next(self, entry: Inflight, deadline: float,
                    timeout_s: float) -> Chunk | Final | ErrorReply | CacheNote | Accepted:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout(f"no answer within {timeout_s:.0f} s; the request was cancelled")
            try:
                return await asyncio.wait_for(entry.queue.get(), timeout=min(remaining, 0.5))
            except TimeoutError:
                self._check_holder(entry)

    def _check_holder(self, entry: Inflight) -> None:
        if entry.holder is None:
            return
        seen = self.workers.last_seen(entry.holder)
        last_sign = max(seen or 0.0, entry.holder_since)
        if time.monotonic() - last_sign > self.workers.liveness_s:
            raise Unavailable(
                f"worker {entry.holder} stopped responding while answering; retry the request",
                code="worker_lost",
            )
