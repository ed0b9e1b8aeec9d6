"""The ingress process: broker, dispatcher and the HTTP server, started and drained together."""

from __future__ import annotations

import logging
from collections.abc import Collection

from contracts.subjects import ALL_STREAMS, CACHE_STAGE, KNOWN_STAGES
from services.ingress.batch_api import BatchApi
from services.ingress.dispatch import Dispatcher
from services.ingress.exact_cache import ExactCache
from services.ingress.gateway import Gateway
from services.ingress.http import create_http_app
from services.ingress.settings import IngressSettings
from services.ingress.tenants import Gate, TenantsFile
from services.shared.asgi_server import AsgiServer
from services.shared.broker import ensure_streams, make_broker
from services.shared.deployment import check_optional, check_pipeline, check_tiers
from services.shared.settings import load_config_file
from services.shared.telemetry import setup_tracing
from services.shared.usage import UsagePublisher

log = logging.getLogger(__name__)


class IngressService:
    name = "ingress"

    def __init__(self, settings: IngressSettings, stages: Collection[str] = KNOWN_STAGES) -> None:
        """``stages``: the stages a pipeline may name (tests add probe stages of their own)."""
        self.settings = settings
        gate = Gate(load_config_file(settings.tenants_file, TenantsFile))
        # The whole configuration is checked before anything connects (exit 78 on a mistake).
        check_pipeline(settings.pipeline, stages)
        check_optional(settings.optional_stages, stages)
        self.tiers = check_tiers(settings.tiers_file, settings.pricebook_file)
        provider = setup_tracing(self.name, settings)
        self.broker = make_broker(self.name, settings, provider)
        self.dispatcher = Dispatcher(self.broker, settings.instance_id, hop_timeout_s=settings.hop_timeout_s,
                                     liveness_s=settings.worker_liveness_s,
                                     optional_hop_timeout_s=settings.optional_hop_timeout_s,
                                     fallbacks=self.tiers.fallbacks())
        self.usage = UsagePublisher(self.broker)
        exact_cache = ExactCache(self.broker, settings.instance_id, self.usage) \
            if settings.exact_cache_at_ingress and CACHE_STAGE in settings.pipeline else None
        self.gateway = Gateway(settings, gate, self.dispatcher, self.tiers, exact_cache)
        self.batch = BatchApi(self.broker, settings)
        self.app = create_http_app(self.gateway, self.batch)
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(self.app, tracer_provider=provider,
                                           excluded_urls="healthz,readyz",
                                           # One span per request, not one more per ASGI message.
                                           exclude_spans=["receive", "send"])
        self._server: AsgiServer | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._server is not None
        return self._server.port

    async def start(self) -> None:
        await self.broker.start()
        await ensure_streams(self.broker, ALL_STREAMS)
        await self.batch.open()
        await self.dispatcher.connect()
        self.usage.start()
        self._server = AsgiServer(self.app, self.settings.host, self.settings.port,
                                  timeout_graceful_shutdown=int(self.settings.drain_timeout_s))
        await self._server.start()
        log.info("listening on http://%s:%d (OpenAI base URL: http://%s:%d/v1)", self.settings.host,
                 self.port, self.settings.host, self.port)

    async def drain(self) -> None:
        # uvicorn stops accepting, then waits for in-flight requests (whose replies still arrive
        # over the bus, which stays connected until close).
        if self._server is not None:
            await self._server.stop()

    def ready(self) -> tuple[bool, dict[str, object]]:
        return self.gateway.readiness()

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()
        await self.usage.stop()
        await self.broker.stop()
