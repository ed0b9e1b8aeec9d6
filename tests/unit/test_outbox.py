"""The usage outbox: batched, delayed, retried until stored, flushed on drain."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest

from contracts.v1 import UsageEvent
from services.worker.outbox import UsageOutbox

pytestmark = pytest.mark.unit
EXAMPLE = Path(__file__).resolve().parents[1] / "examples/v1/usage_event.json"


def event(request_id: str) -> UsageEvent:
    return UsageEvent.model_validate({**json.loads(EXAMPLE.read_text()), "request_id": request_id})


class Store:
    """A JetStream stand-in that fails the first ``failures`` sends."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.rounds: list[list[str]] = []
        self.stored: list[str] = []
        self._round: list[str] | None = None

    async def send(self, ev: UsageEvent, headers: dict[str, str] | None) -> None:
        if self._round is None:
            self._round = []
            self.rounds.append(self._round)
            asyncio.get_running_loop().call_soon(self._end_round)
        self._round.append(ev.request_id)
        await asyncio.sleep(0)
        if self.failures:
            self.failures -= 1
            raise TimeoutError("no ack from the stream")
        self.stored.append(ev.request_id)

    def _end_round(self) -> None:
        self._round = None


@contextlib.asynccontextmanager
async def running(outbox: UsageOutbox):  # type: ignore[no-untyped-def]
    sender = asyncio.create_task(outbox.run())
    try:
        yield outbox
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


async def test_events_put_together_go_out_in_one_round_after_the_delay() -> None:
    store = Store()
    async with running(UsageOutbox(store.send, delay_s=0.05)) as outbox:
        futures = [outbox.put(event(f"r{i}")) for i in range(3)]
        await asyncio.sleep(0.01)
        assert store.stored == []  # the answer goes first
        await asyncio.wait_for(asyncio.gather(*futures), timeout=2)
    assert store.rounds == [["r0", "r1", "r2"]]
    assert len(outbox) == 0


async def test_a_failed_send_is_retried_until_stored_and_only_then_resolves() -> None:
    store = Store(failures=2)
    async with running(UsageOutbox(store.send, delay_s=0.0, retry_s=0.05)) as outbox:
        stored = outbox.put(event("r1"))
        await asyncio.sleep(0.02)
        assert not stored.done()
        await asyncio.wait_for(stored, timeout=2)
    assert store.stored == ["r1"] and len(store.rounds) == 3


async def test_flush_sends_what_is_held_without_the_background_sender() -> None:
    store = Store(failures=1)
    outbox = UsageOutbox(store.send, delay_s=10.0, retry_s=0.01)
    stored = [outbox.put(event("a")), outbox.put(event("b"))]
    await outbox.flush(timeout_s=2)
    assert sorted(store.stored) == ["a", "b"] and all(f.done() for f in stored)
    assert len(outbox) == 0


async def test_flush_gives_up_at_its_deadline_and_keeps_the_events() -> None:
    store = Store(failures=1000)
    outbox = UsageOutbox(store.send, delay_s=0.0, retry_s=0.01)
    stored = outbox.put(event("a"))
    await outbox.flush(timeout_s=0.1)
    assert len(outbox) == 1 and not stored.done()
    outbox.cancel_waiters()
    assert stored.cancelled()
