"""Usage events leave the worker ahead of the answer they charge, and are never dropped.

A usage event is announced on the connection before the final reply that it charges: the
publish is buffered on the same NATS connection as the reply, and NATS keeps one connection's
messages in order, so a reply that reached ingress proves its usage event reached the server.
The answer never waits for JetStream's acknowledgement (a round trip plus a disk write); the
outbox collects the acknowledgements in the background and re-publishes, with the same
``Nats-Msg-Id`` (stored once), any event whose acknowledgement fails or does not come in time.

Plain asyncio, no bus code: the caller passes the two functions that publish one event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from contracts.v1 import UsageEvent

log = logging.getLogger(__name__)

Headers = dict[str, str] | None
#: Hands one event to the connection now (in order with what is published after it) and returns
#: a future that resolves with the server's acknowledgement (or fails).
AnnounceUsage = Callable[[UsageEvent, Headers], Awaitable["asyncio.Future[Any]"]]
#: Publishes one event and returns once the server stored it (used for re-sends).
SendUsage = Callable[[UsageEvent, Headers], Awaitable[object]]


@dataclass
class _Pending:
    event: UsageEvent
    headers: Headers
    stored: asyncio.Future[None]
    #: The acknowledgement of the announcement; None once it failed (the event needs a re-send).
    ack: asyncio.Future[Any] | None
    #: When to stop waiting for ``ack`` and re-send.
    resend_at: float


class UsageOutbox:
    """Usage events between the worker and JetStream.

    Contract: ``put`` returns once the event is on the connection (ahead of anything published
    after it) and never drops it; the future it returns resolves once the server has stored the
    event, for callers that must not go on before the charge is safe (a bulk task is
    acknowledged only after that). An event whose acknowledgement fails, or is not back within
    ``ack_timeout_s``, is re-sent every ``retry_s`` until stored; its ``Nats-Msg-Id`` makes the
    stream keep one copy. ``flush`` waits for every held event (on drain). An event that was
    announced survives the process being killed after its answer went out: the server has it.
    """

    def __init__(self, announce: AnnounceUsage, send: SendUsage, *, ack_timeout_s: float = 5.0,
                 retry_s: float = 1.0, max_batch: int = 256) -> None:
        self._announce = announce
        self._send = send
        self.ack_timeout_s = ack_timeout_s
        self.retry_s = retry_s
        self.max_batch = max_batch
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._round = asyncio.Lock()  # the background loop and a flush never re-send at once

    def __len__(self) -> int:
        return len(self._pending)

    async def put(self, event: UsageEvent, headers: Headers = None) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        entry = _Pending(event, headers, loop.create_future(), None, time.monotonic() + self.ack_timeout_s)
        self._pending.append(entry)
        try:
            ack = await self._announce(event, headers)
        except Exception as exc:
            log.warning("usage event %s not announced (%s: %s); re-sending", event.request_id,
                        type(exc).__name__, exc)
            entry.resend_at = time.monotonic()
            self._wake.set()
        else:
            entry.ack = ack
            ack.add_done_callback(lambda done: self._acknowledged(entry, done))
        return entry.stored

    def _acknowledged(self, entry: _Pending, ack: asyncio.Future[Any]) -> None:
        if ack.cancelled() or ack.exception() is not None:
            reason = "cancelled" if ack.cancelled() else repr(ack.exception())
            log.warning("usage event %s not stored (%s); re-sending", entry.event.request_id, reason)
            entry.ack = None
            entry.resend_at = time.monotonic()
            self._wake.set()
            return
        self._stored(entry)

    def _stored(self, entry: _Pending) -> None:
        if not entry.stored.done():
            entry.stored.set_result(None)
        with contextlib.suppress(ValueError):
            self._pending.remove(entry)

    async def run(self) -> None:
        """The background loop: re-send what was not acknowledged in time, until stored."""
        while True:
            due = self._due()
            if not due:
                waits = [e.resend_at - time.monotonic() for e in self._pending if not e.stored.done()]
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(0.01, min(waits, default=3600.0)))
                continue
            if not await self._resend(due):
                await asyncio.sleep(self.retry_s)

    def _due(self) -> list[_Pending]:
        now = time.monotonic()
        return [e for e in self._pending if not e.stored.done() and e.resend_at <= now][: self.max_batch]

    async def _resend(self, batch: list[_Pending]) -> bool:
        """Publish ``batch`` again and wait for each to be stored; True when all were."""
        async with self._round:
            results = await asyncio.gather(*(self._send(e.event, e.headers) for e in batch),
                                           return_exceptions=True)
        failed = 0
        for entry, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                failed += 1
                entry.resend_at = time.monotonic() + self.retry_s
            else:
                self._stored(entry)
        if failed:
            first = next(r for r in results if isinstance(r, BaseException))
            log.warning("%d usage events not stored yet (%s: %s); retrying in %.1f s", failed,
                        type(first).__name__, first, self.retry_s)
        return not failed

    async def flush(self, timeout_s: float) -> None:
        """Wait until every held event is stored, re-sending as needed, for at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < deadline:
            waiting = [e for e in self._pending if not e.stored.done()]
            for entry in waiting:
                entry.resend_at = min(entry.resend_at, time.monotonic() + 0.5)
            due = self._due()
            if due:
                if not await self._resend(due):
                    await asyncio.sleep(min(self.retry_s, max(0.0, deadline - time.monotonic())))
                continue
            await asyncio.wait([e.stored for e in waiting], timeout=max(0.0, min(0.1, deadline - time.monotonic())))
        if self._pending:
            log.error("%d usage events were not stored before shutdown; those requests go unbilled",
                      len(self._pending))

    def cancel_waiters(self) -> None:
        """Release anybody still awaiting a store (the process is stopping)."""
        for entry in self._pending:
            with contextlib.suppress(asyncio.InvalidStateError):
                entry.stored.cancel()
