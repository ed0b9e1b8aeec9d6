"""nats-py's pull fetch times out with its own error type even when the process was starved, so
FastStream's pull loop (which suppresses only that type) keeps going quietly."""

from __future__ import annotations

import asyncio
import time

import nats
import nats.errors
import pytest

from services.shared import natscompat
from tests.support.natsd import NatsServer

pytestmark = pytest.mark.integration


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


def test_the_wrapper_is_applied_once() -> None:
    natscompat.apply()
    fetch = nats.js.client.JetStreamContext.PullSubscription.fetch
    natscompat.apply()
    assert nats.js.client.JetStreamContext.PullSubscription.fetch is fetch
    assert fetch.__wrapped__.__name__ == "fetch"  # type: ignore[attr-defined]
