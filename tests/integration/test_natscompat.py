"""The nats-py fixes: a flush covers the commands written before it (a subscription is in place
once ``flush`` returns); a pull fetch times out with nats-py's own error type even when the
process was starved, so FastStream's pull loop (which suppresses only that type) goes on quietly;
a client reconnecting to a bus that is gone stops when cancelled. And the broker's stop closes a
connection it cannot drain."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any
from urllib.parse import urlparse

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.transport import TcpTransport

from services.shared import natscompat
from services.shared.broker import make_broker
from services.shared.settings import ServiceSettings
from services.stack import free_port
from tests.support.natsd import NatsServer, start_nats_server

pytestmark = pytest.mark.integration


async def test_a_subscription_is_in_place_once_flush_returns(nats_server: NatsServer) -> None:
    # Without the fix, 2-13% of these requests got "no responders" on this machine: the flush's
    # PING overtook the SUB, so its PONG proved nothing about the subscription.
    natscompat.apply()
    server_side = await nats.connect(nats_server.url)
    client = await nats.connect(nats_server.url)
    try:
        missed = 0
        for i in range(300):
            async def echo(msg: Msg) -> None:
                await server_side.publish(msg.reply, msg.data)

            sub = await server_side.subscribe(f"compat.svc.{i % 3}", queue="svc", cb=echo)
            await server_side.flush()
            try:
                await client.request(f"compat.svc.{i % 3}", b"ping", timeout=5)
            except nats.errors.NoRespondersError:
                missed += 1
            await sub.unsubscribe()
            await server_side.flush()
        assert missed == 0, f"{missed} of 300 requests found no subscriber after subscribe + flush"
    finally:
        await client.close()
        await server_side.close()


async def test_a_starved_fetch_raises_the_nats_timeout(nats_server: NatsServer) -> None:
    natscompat.apply()
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="COMPAT", subjects=["compat.>"])
        psub = await js.pull_subscribe("compat.empty", durable="compat", stream="COMPAT")
        loop = asyncio.get_running_loop()
        seen: list[type[BaseException]] = []
        for _ in range(5):
            # The process gets no CPU for longer than the fetch window, as on a saturated host:
            # the probe's "no messages" reply is read only after the deadline has passed.
            loop.call_soon(time.sleep, 0.3)
            with pytest.raises(asyncio.TimeoutError) as caught:
                await psub.fetch(64, timeout=0.2)
            seen.append(caught.type)
        assert all(issubclass(t, nats.errors.TimeoutError) for t in seen), seen
        # The stream still serves: a published message is fetched afterwards.
        await js.publish("compat.empty", b"x")
        msgs = await psub.fetch(64, timeout=2)
        assert [m.data for m in msgs] == [b"x"]
        await js.delete_stream("COMPAT")
    finally:
        await nc.close()


def test_the_fixes_are_applied_once() -> None:
    natscompat.apply()
    fetch = nats.js.client.JetStreamContext.PullSubscription.fetch
    send_ping = Client._send_ping
    connect = TcpTransport.connect
    natscompat.apply()
    assert nats.js.client.JetStreamContext.PullSubscription.fetch is fetch
    assert Client._send_ping is send_ping
    assert TcpTransport.connect is connect
    assert fetch.__wrapped__.__name__ == "fetch"  # type: ignore[attr-defined]


def _cancel_after(task: asyncio.Task[Any], turns: int) -> list[bool]:
    """Cancel ``task`` ``turns`` loop turns from now; the list gets whether it was still running."""
    loop = asyncio.get_running_loop()
    running_at_cancel: list[bool] = []

    def turn(left: int) -> None:
        if left:
            loop.call_soon(turn, left - 1)
        else:
            running_at_cancel.append(not task.done())
            task.cancel()

    turn(turns)
    return running_at_cancel


async def _outcome(task: asyncio.Task[Any], running_at_cancel: list[bool]) -> str:
    """How ``task`` ended: "cancelled", "finished before the cancel", or "SWALLOWED" (it was
    still running when cancelled, yet did not end with CancelledError); "running" after 3 s."""
    await asyncio.wait([task], timeout=3)
    while not running_at_cancel:
        await asyncio.sleep(0)
    if not task.done():
        return "running"
    if task.cancelled():
        return "cancelled"
    return "SWALLOWED" if running_at_cancel[0] else "finished before the cancel"


async def test_a_connect_to_a_bus_that_is_gone_can_always_be_cancelled() -> None:
    # Python 3.11's wait_for (nats-py's TcpTransport.connect) returned the refused connect's
    # error instead of CancelledError when the cancel came 2 to 4 turns after the connect began.
    natscompat.apply()
    gone = urlparse(f"nats://127.0.0.1:{free_port()}")
    outcomes = []
    for turns in range(8):
        task = asyncio.create_task(TcpTransport().connect(gone, buffer_size=32768, connect_timeout=2))
        await asyncio.sleep(0)  # the connect begins
        outcomes.append(await _outcome(task, _cancel_after(task, turns)))
        with contextlib.suppress(BaseException):
            task.result()
    assert "SWALLOWED" not in outcomes, outcomes
    assert "cancelled" in outcomes, outcomes


async def test_a_client_reconnecting_to_a_bus_that_is_gone_stops_when_cancelled() -> None:
    # What asyncio.run does to a service's leftover tasks when it ends: cancel them and wait. A
    # reconnect task that lost its cancel retried forever (max_reconnect_attempts=-1), and the
    # service waited with it.
    natscompat.apply()
    for turns in range(6):
        server = start_nats_server()
        nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                error_cb=_ignore)
        cancelled: list[list[bool]] = []
        transport = nc._transport
        assert transport is not None
        original = transport.connect

        async def connect(*args: Any, original: Any = original, turns: int = turns,
                          cancelled: list[list[bool]] = cancelled, **kwargs: Any) -> None:
            if not cancelled:  # the reconnect task's first connect: cancel it that many turns in
                task = asyncio.current_task()
                assert task is not None
                cancelled.append(_cancel_after(task, turns))
            await original(*args, **kwargs)

        transport.connect = connect  # type: ignore[method-assign]
        try:
            server.process.kill()
            server.stop()
            deadline = time.monotonic() + 10
            while not cancelled and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            reconnecting = nc._reconnection_task
            assert cancelled and reconnecting is not None
            outcome = await _outcome(reconnecting, cancelled[0])
            # nats-py's loop ends quietly on CancelledError, so a task that ended was cancelled.
            assert outcome != "running", f"cancelled {turns} turns into its connect, it went on"
        finally:
            nc.options["max_reconnect_attempts"] = 1  # a loop that outlived its cancel gives up
            with contextlib.suppress(Exception):
                await nc.close()


async def test_a_broker_whose_bus_is_gone_stops_and_closes_its_connection() -> None:
    # FastStream's stop drains, and nats-py refuses to drain a reconnecting connection: stop
    # raised and left the connection retrying forever behind it.
    server = start_nats_server()
    broker = make_broker("compat", ServiceSettings(nats_url=server.url), None)
    await broker.connect()
    nc = broker.connection
    try:
        server.stop()
        deadline = time.monotonic() + 10
        while not nc.is_reconnecting and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert nc.is_reconnecting
        await broker.stop()
        assert nc.is_closed
        assert nc._reconnection_task is None or nc._reconnection_task.done()
    finally:
        server.stop()
        with contextlib.suppress(Exception):
            await nc.close()


async def _ignore(_: Exception) -> None:
    pass
