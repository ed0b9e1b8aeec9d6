"""The cache stage on the bus: lookups on the routing slip, learning from announced answers,
purges on request.

- Lookups: the ``cache`` stage subject, through a ``StageRunner`` (hop acknowledged at once,
  then ``CacheLogic.lookup``; the stage is optional, so a failure passes the task on).
- Learning: ``AnswerAnnounced`` on ``CACHE_FILL_SUBJECT`` (core NATS, a queue group: one replica
  learns each answer), after the worker has replied: the client never waits for it.
- Purges: ``CachePurge`` request/reply on ``CACHE_PURGE_SUBJECT`` (ingress's admin endpoint).

The exact store is JetStream KV on the same NATS; the semantic index is Qdrant, local mode by
default (one replica; set ``SF_QDRANT_URL`` for a server shared by several).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from contracts.subjects import (
    CACHE_FILL_QUEUE_GROUP,
    CACHE_FILL_SUBJECT,
    CACHE_PURGE_QUEUE_GROUP,
    CACHE_PURGE_SUBJECT,
    CACHE_STAGE,
)
from contracts.v1 import AnswerAnnounced, CachePurge, CachePurged
from services.cache.embedding import DIM, Embedder, EmbedderMissing
from services.cache.exact_store import ExactStore
from services.cache.logic import CacheLogic, LookupPolicy
from services.cache.semantic import SemanticIndex
from services.cache.settings import CacheSettings
from services.cache.verifier import ArtifactError, load
from services.shared import metrics
from services.shared.broker import is_connected, make_broker
from services.shared.deployment import check_tiers
from services.shared.settings import ConfigError
from services.shared.slip import StageHop
from services.shared.stage import StageRunner
from services.shared.telemetry import setup_tracing
from services.shared.validation import summary

log = logging.getLogger(__name__)


class CacheService:
    name = CACHE_STAGE

    def __init__(self, settings: CacheSettings) -> None:
        self.settings = settings
        #: Where a task goes when its tier is unavailable (the stage forwards to inference).
        self.fallbacks = check_tiers(settings.tiers_file, settings.pricebook_file).fallbacks()
        # Loaded before anything connects: a missing or mis-calibrated artifact, or a missing
        # embedding model, stops start-up with the command that builds it.
        try:
            self.verifier = load(settings.cache_verifier_file, target=settings.cache_target_false_hit_rate) \
                if settings.semantic else None
            self.embedder = Embedder(settings.embedder_dir, threads=settings.embed_threads) \
                if settings.semantic else None
        except (ArtifactError, EmbedderMissing) as exc:
            # Not a crash to restart: the artifact or model must be built first (exit 78).
            raise ConfigError(f"{exc} (or set SF_SEMANTIC=false for exact answers only)") from exc
        self.broker = make_broker(self.name, settings, setup_tracing(self.name, settings))
        self.logic: CacheLogic | None = None
        self.index: SemanticIndex | None = None
        self.runner: StageRunner | None = None
        self._subscriptions: list[Subscription] = []
        self._learning: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        await self.broker.connect()
        exact = await ExactStore.open(self.broker.connection.jetstream(), max_age_s=s.max_ttl_s)
        if s.semantic:
            self.index = await SemanticIndex.open(url=s.qdrant_url, path=s.qdrant_path,
                                                  collection=s.qdrant_collection, dim=DIM)
        self.logic = CacheLogic(exact, self.index, self.embedder, self.verifier,
                                LookupPolicy(default_ttl_s=s.default_ttl_s, max_ttl_s=s.max_ttl_s,
                                             candidates=s.candidates, min_cosine=s.min_cosine,
                                             overlap=s.cache_overlap),
                                instance_id=s.instance_id)
        if self.embedder is not None:
            await self.logic.embed("warm up")  # the first run of an ONNX session is slow
        await self.broker.start()
        nc = self.broker.connection
        self._subscriptions = [
            await nc.subscribe(CACHE_FILL_SUBJECT, queue=CACHE_FILL_QUEUE_GROUP, cb=self._on_announced),
            await nc.subscribe(CACHE_PURGE_SUBJECT, queue=CACHE_PURGE_QUEUE_GROUP, cb=self._on_purge),
        ]
        self.runner = StageRunner(self.broker, CACHE_STAGE, s.instance_id, self.logic.lookup,
                                  hop=StageHop(self.broker, fallbacks=self.fallbacks))
        await self.runner.start()
        if self.index is not None:
            self._sweeper = asyncio.create_task(self._sweep())
        where = s.qdrant_url or f"local mode in {s.qdrant_path}"
        log.info("cache stage ready: exact on JetStream KV, semantic %s", where if s.semantic else "off")

    async def _on_announced(self, msg: Msg) -> None:
        try:
            announced = AnswerAnnounced.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning("ignoring a malformed answer announcement: %s", summary(exc))
            return
        # Learnt in the background: the subscription's callback queue keeps moving.
        task = asyncio.create_task(self._learn(announced))
        self._learning.add(task)
        task.add_done_callback(self._learning.discard)

    async def _learn(self, announced: AnswerAnnounced) -> None:
        assert self.logic is not None
        with contextlib.suppress(Exception):  # logged and counted by learn()
            await self.logic.learn(announced)

    async def _on_purge(self, msg: Msg) -> None:
        assert self.logic is not None
        try:
            result = await self.logic.purge(CachePurge.model_validate_json(msg.data))
        except ValidationError as exc:
            result = CachePurged(ok=False, error=f"malformed purge request: {summary(exc)}")
        except Exception as exc:
            log.exception("cache purge failed")
            result = CachePurged(ok=False, error=f"{type(exc).__name__}: {exc}")
        if msg.reply:
            await msg.respond(result.model_dump_json().encode())

    async def _sweep(self) -> None:
        assert self.index is not None
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                removed = await self.index.sweep_expired()
            except Exception:
                log.exception("removing expired points from the semantic index failed; retrying later")
                continue
            if removed:
                metrics.CACHE_EVICTIONS.labels("expired").inc(removed)

    async def drain(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for sub in subscriptions:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self.runner is not None:
            await self.runner.drain()
        if self._learning:
            await asyncio.gather(*self._learning, return_exceptions=True)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.broker.stop()
        if self.index is not None:
            await self.index.close()

    def ready(self) -> tuple[bool, dict[str, Any]]:
        connected = is_connected(self.broker)
        return connected and self.runner is not None, {
            "bus": connected, "semantic": self.settings.semantic,
            "index": self.settings.qdrant_url or str(self.settings.qdrant_path)}
