"""The nats-py fixes: a flush covers the commands written before it (a subscription is in place
once ``flush`` returns), and a pull fetch times out with nats-py's own error type even when the
process was starved, so FastStream's pull loop (which suppresses only that type) goes on quietly."""

from __future__ import annotations

import asyncio
import time

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from services.shared import natscompat
from tests.support.natsd import NatsServer

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
    natscompat.apply()
    assert nats.js.client.JetStreamContext.PullSubscription.fetch is fetch
    assert Client._send_ping is send_ping
    assert fetch.__wrapped__.__name__ == "fetch"  # type: ignore[attr-defined]
