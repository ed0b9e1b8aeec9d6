"""Fixes for nats-py, applied by every service before it connects.

1. **A flush that returns before the commands it should cover reached the server.** nats-py 2.16
   (``Client._send_ping``) writes the PING straight to the socket while commands written before
   it (a ``SUB``, a ``PUB``) still wait in the client's pending buffer for the flusher task. So
   the PING goes out first, the PONG can come back before the server has seen the ``SUB``, and
   ``subscribe(); await flush()`` does not guarantee that the subscription is in place: measured
   here, a request sent from another connection right after it got "no responders" 2 to 13% of the
   time. A worker announcing itself ready, and tests that start one and send it work, hit this.
   The fix queues the PING behind the pending commands, so the flusher writes them in order.

2. **A pull fetch that times out with the wrong error.** nats-py 2.15 and 2.16
   (``PullSubscription.fetch`` → ``_fetch_n``) raise a bare ``asyncio.TimeoutError`` instead of
   ``nats.errors.TimeoutError`` when the fetch deadline runs out between its no-wait probe and
   its lingering request: on a saturated host, for example while vLLM loads, a process can miss
   the whole fetch window. FastStream's pull loop suppresses only nats-py's own timeout, so the
   bare one escapes, and FastStream logs it at ERROR and restarts the consumer task: a false
   alarm on every busy start-up. Upstream: nats-io/nats.py PR #1008 (open as of nats-py 2.16.0).
   The fix re-raises that timeout as ``nats.errors.TimeoutError``, which subclasses
   ``asyncio.TimeoutError``: every caller that caught either still catches it. Once nats-py
   raises its own type, the wrapper passes it through untouched.

3. **A reconnecting client that cannot be cancelled.** With the bus gone, nats-py's reconnect task
   loops (``max_reconnect_attempts=-1``: forever) through ``TcpTransport.connect``, which bounds
   the TCP connect with ``asyncio.wait_for``. On Python 3.11 ``wait_for`` swallows a cancellation
   that lands while the connect it waits on fails in the same few loop turns (CPython
   gh-86296, fixed in 3.12 by rewriting ``wait_for`` on ``asyncio.timeout``): the task gets the
   connect's ``ConnectionRefusedError`` instead of ``CancelledError``, the reconnect loop, which
   retries on any ``Exception``, sleeps and tries again, and the cancel is lost. Cancelling the
   task is how ``asyncio.run`` ends a service (and how nats-py's own ``close`` stops
   reconnecting), so a service stopping while its bus died with it, as when ``make run``'s
   launcher is killed (SIGTERM to nats-server and every service at once), waited forever
   (about one try in three under load). The fix bounds the connect with ``asyncio.timeout``,
   which passes a cancellation on; applied only on Python before 3.12.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from typing import Any

import nats.errors
from nats.aio import client as nats_client
from nats.aio import transport as nats_transport
from nats.js.client import JetStreamContext

_MARK = "_skinflint_fix"


def apply() -> None:
    """Apply the fixes once per process (idempotent)."""
    _queue_pings_in_order()
    _fetch_timeout_type()
    _cancellable_connect()


def _queue_pings_in_order() -> None:
    cls = nats_client.Client
    if getattr(cls._send_ping, _MARK, False):
        return
    ping = nats_client.PING_PROTO

    async def _send_ping(self: Any, future: asyncio.Future[Any] | None = None) -> None:
        if future is None:
            future = asyncio.get_running_loop().create_future()
        self._pongs.append(future)
        # Behind whatever is pending: the PONG then proves the server has read all of it.
        self._pending.append(ping)
        self._pending_data_size += len(ping)
        await self._flush_pending()

    setattr(_send_ping, _MARK, True)
    cls._send_ping = _send_ping  # type: ignore[method-assign]


def _fetch_timeout_type() -> None:
    cls = JetStreamContext.PullSubscription
    original = cls.fetch
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    async def fetch(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await original(self, *args, **kwargs)
        except nats.errors.TimeoutError:
            raise
        except TimeoutError as exc:
            raise nats.errors.TimeoutError from exc

    setattr(fetch, _MARK, True)
    cls.fetch = fetch  # type: ignore[method-assign]


def _cancellable_connect() -> None:
    cls = nats_transport.TcpTransport
    if sys.version_info >= (3, 12) or getattr(cls.connect, _MARK, False):
        return

    async def connect(self: Any, uri: Any, buffer_size: int, connect_timeout: int) -> None:
        # nats-py 2.16's body, with asyncio.timeout where it has asyncio.wait_for.
        async with asyncio.timeout(connect_timeout):
            r, w = await asyncio.open_connection(host=uri.hostname, port=uri.port, limit=buffer_size)
        self._bare_io_reader = self._io_reader = r
        self._bare_io_writer = self._io_writer = w

    setattr(connect, _MARK, True)
    cls.connect = connect  # type: ignore[method-assign]
