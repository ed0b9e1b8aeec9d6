"""An ASGI app served by uvicorn inside a service's own event loop.

Ingress's API and every other service's health endpoints run this way. The service runner, not
uvicorn, owns SIGTERM and SIGINT (it drains the service first), so uvicorn's handlers are off.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import uvicorn


class AsgiServer:
    """``app`` on ``host:port`` (port 0: any free port, see ``port``); ``options`` go to
    ``uvicorn.Config``."""

    def __init__(self, app: Any, host: str, port: int, **options: Any) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                lifespan="off", **options)
        self._server = uvicorn.Server(config)
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self._serving: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._server.servers, "the server is not started"
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Return once the server listens; a bind error is raised here."""
        self._serving = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._serving.done():
                await self._serving  # re-raise the bind error
                raise RuntimeError("the server stopped before it started")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Stop accepting and wait for the requests in flight (up to ``timeout_graceful_shutdown``)."""
        if self._serving is not None:
            self._server.should_exit = True
            await self._serving

    async def close(self) -> None:
        """Stop now, whatever is in flight."""
        if self._serving is not None and not self._serving.done():
            self._server.force_exit = True
            self._server.should_exit = True
            await asyncio.gather(self._serving, return_exceptions=True)
