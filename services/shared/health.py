"""Liveness, readiness and Prometheus metrics over HTTP, for every service but ingress (which
serves the same three paths on its own HTTP port).

  GET /healthz   200 while the process's event loop answers (liveness)
  GET /readyz    200 once the service takes work, 503 before that and while draining (readiness)
  GET /metrics   prometheus-client's registry, in Prometheus' text format

The server starts before the service does, so a worker loading its model for a minute is alive
but not ready, and an orchestrator neither kills it nor sends it work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger(__name__)

#: What a service says about its readiness: ready or not, and details worth showing.
Readiness = Callable[[], tuple[bool, dict[str, Any]]]


def health_app(service_name: str, readiness: Readiness) -> Starlette:
    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "service": service_name})

    async def readyz(_: Request) -> JSONResponse:
        ready, details = readiness()
        return JSONResponse({"ready": ready, "service": service_name, **details},
                            status_code=200 if ready else 503)

    async def metrics(_: Request) -> Response:
        # A route, not a Mount of prometheus-client's ASGI app: a Mount answers /metrics with a
        # 307 to /metrics/, which a scraper or healthcheck that does not follow redirects reads
        # as a failure.
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ])


class HealthServer:
    """The three endpoints on ``host:port`` (port 0: any free port, see ``port``)."""

    def __init__(self, service_name: str, host: str, port: int, readiness: Readiness) -> None:
        config = uvicorn.Config(health_app(service_name, readiness), host=host, port=port,
                                log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        # The service runner owns SIGTERM/SIGINT; uvicorn must not take them.
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self._serving: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self._server.servers, "the health server is not started"
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._serving = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._serving.done():
                await self._serving  # re-raise the bind error
                raise RuntimeError("the health server stopped before it started")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._serving is not None:
            self._server.should_exit = True
            await asyncio.gather(self._serving, return_exceptions=True)
