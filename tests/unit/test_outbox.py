"""The usage outbox: announced at once, acknowledged off the answer's path, re-sent until stored."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from contracts.v1 import UsageEvent
from services.shared.outbox import UsageOutbox

pytestmark = pytest.mark.unit
EXAMPLE = Path(__file__).resolve().parents[1] / "examples/v1/usage_event.json"


def event(request_id: str) -> UsageEvent:
    return UsageEvent.model_validate({**json.loads(EXAMPLE.read_text()), "request_id": request_id})


class Server:
    """A JetStream stand-in. ``ack`` says what becomes of an announcement: "ok", "fail" (an
    error acknowledgement), "lost" (never acknowledged) or "raise" (the publish itself fails).
    Re-sends fail ``resend_failures`` times first. ``stored`` keeps one copy per event, as the
    stream's de-duplication by message id does."""

    def __init__(self, ack: str = "ok", resend_failures: int = 0) -> None:
        self.ack = ack
        self.resend_failures = resend_failures
        self.announced: list[str] = []
        self.resent: list[str] = []
        self.stored: dict[str, int] = {}
        self.pending: list[tuple[str, asyncio.Future[Any]]] = []

    async def announce(self, ev: UsageEvent, headers: dict[str, str] | None) -> asyncio.Future[Any]:
        if self.ack == "raise":
            raise ConnectionError("connection closed")
        self.announced.append(ev.request_id)
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append((ev.request_id, ack))
        if self.ack == "ok":
            asyncio.get_running_loop().call_later(0.01, self._ack, ev.request_id, ack)
        elif self.ack == "fail":
            asyncio.get_running_loop().call_later(0.01, ack.set_exception, RuntimeError("stream full"))
        return ack

    def _ack(self, request_id: str, ack: asyncio.Future[Any]) -> None:
        self.stored[request_id] = 1
        ack.set_result({"seq": len(self.stored)})

    async def send(self, ev: UsageEvent, headers: dict[str, str] | None) -> object:
        self.resent.append(ev.request_id)
        await asyncio.sleep(0)
        if self.resend_failures:
            self.resend_failures -= 1
            raise TimeoutError("no ack from the stream")
        self.stored.setdefault(ev.request_id, 1)
        return {"duplicate": False}


@contextlib.asynccontextmanager
async def running(outbox: UsageOutbox):  # type: ignore[no-untyped-def]
    sender = asyncio.create_task(outbox.run())
    try:
        yield outbox
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


async def test_put_announces_at_once_and_resolves_on_the_acknowledgement() -> None:
    server = Server()
    async with running(UsageOutbox(server.announce, server.send)) as outbox:
        stored = await outbox.put(event("r1"))
        assert server.announced == ["r1"]  # on the connection before put returns
        assert not stored.done()  # the answer does not wait for the acknowledgement
        await asyncio.wait_for(stored, timeout=2)
    assert server.resent == [] and len(outbox) == 0


async def test_an_error_acknowledgement_is_re_sent_until_stored() -> None:
    server = Server(ack="fail", resend_failures=2)
    async with running(UsageOutbox(server.announce, server.send, retry_s=0.02)) as outbox:
        stored = await outbox.put(event("r1"))
        await asyncio.wait_for(stored, timeout=2)
    assert server.resent == ["r1", "r1", "r1"] and server.stored == {"r1": 1}


async def test_a_lost_acknowledgement_is_re_sent_after_the_timeout_and_stored_once() -> None:
    server = Server(ack="lost")
    async with running(UsageOutbox(server.announce, server.send, ack_timeout_s=0.05)) as outbox:
        stored = await outbox.put(event("r1"))
        await asyncio.sleep(0.02)
        assert not stored.done() and server.resent == []
        await asyncio.wait_for(stored, timeout=2)
    assert server.resent == ["r1"] and server.stored == {"r1": 1}


async def test_a_publish_that_raises_is_kept_and_re_sent() -> None:
    server = Server(ack="raise")
    async with running(UsageOutbox(server.announce, server.send)) as outbox:
        stored = await outbox.put(event("r1"))
        await asyncio.wait_for(stored, timeout=2)
    assert server.resent == ["r1"]


async def test_flush_waits_for_acknowledgements_and_re_sends_lost_ones_without_the_loop() -> None:
    server = Server(ack="lost")
    outbox = UsageOutbox(server.announce, server.send, ack_timeout_s=60)
    stored = [await outbox.put(event("a")), await outbox.put(event("b"))]
    await outbox.flush(timeout_s=3)
    assert sorted(server.stored) == ["a", "b"] and all(f.done() for f in stored)
    assert len(outbox) == 0


async def test_flush_gives_up_at_its_deadline_and_keeps_the_events() -> None:
    server = Server(ack="fail", resend_failures=1000)
    outbox = UsageOutbox(server.announce, server.send, retry_s=0.01)
    stored = await outbox.put(event("a"))
    await outbox.flush(timeout_s=0.2)
    assert len(outbox) == 1 and not stored.done()
    outbox.cancel_waiters()
    assert stored.cancelled()
