"""Usage events leave the worker off the answer's critical path, in batches, and are never dropped.

A usage event is a JetStream publish: a round trip to the server, which also writes it to disk.
Sent inline right after the answer, it competed for the CPU with the ingress relaying that very
answer (measured at concurrency 1 on 2 cores with a fake engine: time in skinflint p50 2.2 ms
without it, 2.7 ms with it; p99 3.5 ms against 5.2 ms). The outbox sends events a moment later
(``delay_s``), all that are waiting in one round, and retries until the server has stored them.

Plain asyncio, no bus code: the caller passes the function that publishes one event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from contracts.v1 import UsageEvent

log = logging.getLogger(__name__)

#: Publishes one event (with these trace headers) and returns once the server stored it.
SendUsage = Callable[[UsageEvent, dict[str, str] | None], Awaitable[None]]


@dataclass
class _Pending:
    event: UsageEvent
    headers: dict[str, str] | None
    stored: asyncio.Future[None]


class UsageOutbox:
    """Holds usage events until JetStream has stored them.

    Contract: ``put`` never blocks and never drops; the future it returns resolves once the
    event is stored, for callers that must not go on before the charge is safe (a bulk task is
    acknowledged only after that). A failed send is retried every ``retry_s`` in the same order;
    events carry their ``Nats-Msg-Id``, so a retry after a lost acknowledgement is stored once.
    ``flush`` sends everything now (on drain). Events still held when the process is killed are
    lost, as they would be an instant before an inline send.
    """

    def __init__(self, send: SendUsage, *, delay_s: float = 0.05, max_batch: int = 256,
                 retry_s: float = 1.0) -> None:
        self._send = send
        self.delay_s = delay_s
        self.max_batch = max_batch
        self.retry_s = retry_s
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._round = asyncio.Lock()  # the background loop and a flush never send the same event at once

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, event: UsageEvent, headers: dict[str, str] | None = None) -> asyncio.Future[None]:
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(event, headers, stored))
        self._wake.set()
        return stored

    async def run(self) -> None:
        """The background sender: wait for events, let the answer go first, send, repeat."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.delay_s)
            if not await self._send_round():
                await asyncio.sleep(self.retry_s)

    async def flush(self, timeout_s: float) -> None:
        """Send every held event now, retrying until they are stored or ``timeout_s`` runs out."""
        deadline = time.monotonic() + timeout_s
        while self._pending:
            if not await self._send_round() and time.monotonic() + self.retry_s < deadline:
                await asyncio.sleep(self.retry_s)
            if time.monotonic() >= deadline:
                log.error("%d usage events were not stored before shutdown; those requests go unbilled",
                          len(self._pending))
                return

    async def _send_round(self) -> bool:
        """Send up to ``max_batch`` held events at once; True when all of them were stored."""
        async with self._round:
            return await self._send_batch()

    async def _send_batch(self) -> bool:
        self._wake.clear()
        batch = self._pending[: self.max_batch]
        if not batch:
            return True
        results = await asyncio.gather(*(self._send(p.event, p.headers) for p in batch), return_exceptions=True)
        failed = [p for p, r in zip(batch, results, strict=True) if isinstance(r, BaseException)]
        for p, r in zip(batch, results, strict=True):
            if not isinstance(r, BaseException) and not p.stored.done():
                p.stored.set_result(None)
        sent = {id(p) for p in batch} - {id(p) for p in failed}
        self._pending = [p for p in self._pending if id(p) not in sent]
        if self._pending:
            self._wake.set()
        if failed:
            first = next(r for r in results if isinstance(r, BaseException))
            log.warning("%d usage events not stored yet (%s: %s); retrying in %.1f s", len(failed),
                        type(first).__name__, first, self.retry_s)
        return not failed

    def cancel_waiters(self) -> None:
        """Release anybody still awaiting a store (the process is stopping)."""
        for p in self._pending:
            with contextlib.suppress(asyncio.InvalidStateError):
                p.stored.cancel()
