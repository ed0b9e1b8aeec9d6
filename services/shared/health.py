"""Liveness, readiness and Prometheus metrics over HTTP, for every service but ingress (which
serves the same three paths on its own HTTP port).

  GET /healthz   200 while the process's event loop answers (liveness)
  GET /readyz    200 once the service takes work, 503 before that and while draining (readiness)
  GET /metrics   prometheus-client's registry, in Prometheus' text format

The server starts before the service does, so a worker loading its model for a minute is alive
but not ready, and an orchestrator neither kills it nor sends it work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.shared.asgi_server import AsgiServer

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

    return Starlette(routes=[
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        # A route, not a Mount of prometheus-client's ASGI app: a Mount answers /metrics with a
        # 307 to /metrics/, which a scraper or healthcheck that does not follow redirects reads
        # as a failure.
        Route("/metrics", metrics),
    ])


async def metrics(_: Request) -> Response:
    """``GET /metrics``: this process's registry in Prometheus' text format (ingress serves it too)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def health_server(service_name: str, host: str, port: int, readiness: Readiness) -> AsgiServer:
    """The three endpoints on ``host:port`` (port 0: any free port, see ``AsgiServer.port``)."""
    return AsgiServer(health_app(service_name, readiness), host, port)
