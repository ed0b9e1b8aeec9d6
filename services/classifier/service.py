"""The classifier stage on the bus: routed tasks get their tier, through a ``StageRunner``.

Optional on the slip by default: when no replica runs or it fails, a routed request goes on to
its default tier (``routing.default_tier``), which costs the saving, never the answer.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import trace

from contracts.subjects import CLASSIFIER_STAGE
from contracts.v1 import TaskEnvelope
from services.cache.embedding import Embedder, EmbedderMissing
from services.classifier.logic import ClassifierLogic
from services.classifier.router import PolicyMissing, build_router
from services.classifier.settings import ClassifierSettings
from services.shared.broker import is_connected, make_broker
from services.shared.deployment import check_tiers
from services.shared.settings import ConfigError
from services.shared.slip import StageHop
from services.shared.stage import Forward, StageRunner
from services.shared.telemetry import setup_tracing

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


class ClassifierService:
    name = CLASSIFIER_STAGE

    def __init__(self, settings: ClassifierSettings) -> None:
        self.settings = settings
        # Checked and loaded before anything connects: a wrong config or a missing artifact stops
        # start-up (exit 78) with the key or the command that builds it.
        self.tiers = check_tiers(settings.tiers_file, settings.pricebook_file)
        if self.tiers.routing is None:
            raise ConfigError(f"{settings.tiers_file}: routing: missing; the classifier has nothing to decide "
                              "(add a routing section, or leave 'classifier' off SF_PIPELINE)")
        try:
            self.router = build_router(self.tiers.routing)
            needs = self.router.live.scorer.needs_embedding() or any(
                c.scorer.needs_embedding() for c in self.router.shadows)
            embedder = Embedder(settings.embedder_dir, threads=settings.embed_threads) if needs else None
        except (PolicyMissing, EmbedderMissing) as exc:
            raise ConfigError(str(exc)) from exc
        self.logic = ClassifierLogic(self.router, embedder)
        self.broker = make_broker(self.name, settings, setup_tracing(self.name, settings))
        self.runner: StageRunner | None = None

    async def _route(self, env: TaskEnvelope) -> Forward:
        with tracer.start_as_current_span("classify", attributes={"sf.request_id": env.request_id}):
            return await self.logic.route(env)

    async def start(self) -> None:
        if self.logic.embedder is not None:
            self.logic.embedder.embed(["warm up"])  # the first run of an ONNX session is slow
        await self.broker.start()
        hop = StageHop(self.broker, fallbacks=self.tiers.fallbacks())
        self.runner = StageRunner(self.broker, CLASSIFIER_STAGE, self.settings.instance_id, self._route, hop=hop)
        await self.runner.start()
        r = self.router
        log.info("classifier ready: %s or %s by %s (threshold %.3f)%s", r.routing.weak, r.routing.strong,
                 r.live.name, r.live.threshold,
                 f"; shadows: {', '.join(c.name for c in r.shadows)}" if r.shadows else "")

    async def drain(self) -> None:
        if self.runner is not None:
            await self.runner.drain()

    async def close(self) -> None:
        await self.broker.stop()

    def ready(self) -> tuple[bool, dict[str, Any]]:
        connected = is_connected(self.broker)
        return connected and self.runner is not None, {"bus": connected, "policy": self.router.live.name,
                                                       "threshold": self.router.live.threshold}
