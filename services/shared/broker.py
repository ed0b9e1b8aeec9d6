"""The one way services get a NATS broker: tracing always attached, streams ensured."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from faststream.nats import NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from opentelemetry.sdk.trace import TracerProvider

from contracts.subjects import StreamSpec
from services.shared import natscompat
from services.shared.settings import ServiceSettings

log = logging.getLogger(__name__)


def make_broker(
    service_name: str, settings: ServiceSettings, tracer_provider: TracerProvider | None
) -> NatsBroker:
    """A broker whose every publish and handled message is a span (trace context travels in
    message headers, so one request is one trace across all services)."""
    natscompat.apply()
    return NatsBroker(
        servers=[s.strip() for s in settings.nats_url.split(",") if s.strip()],
        name=f"skinflint-{service_name}-{settings.instance_id}",
        middlewares=(NatsTelemetryMiddleware(tracer_provider=tracer_provider),),
        graceful_timeout=settings.drain_timeout_s,
        # FastStream logs every message it handles at ``log_level``: at DEBUG on our own logger
        # those lines cost one level check unless someone asks for them; errors still show.
        logger=logging.getLogger(f"skinflint.bus.{service_name}"),
        log_level=logging.DEBUG,
        # Keep trying while the bus restarts instead of dying: services outlive NATS blips.
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
    )


def is_connected(broker: NatsBroker) -> bool:
    """Whether the broker holds a live connection to the bus now (False before it connected)."""
    connection = broker.connection
    return connection is not None and connection.is_connected


def _stream_config(spec: StreamSpec) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=RetentionPolicy(spec.retention),
        storage=StorageType.FILE,
        duplicate_window=spec.duplicate_window_s,
        max_age=spec.max_age_s,
    )


async def ensure_streams(broker: NatsBroker, specs: Iterable[StreamSpec]) -> None:
    """Create (or bring up to date) the JetStream streams a service depends on. Idempotent, so
    every replica may call it at start-up; there is no separate migration step to forget."""
    js = broker.connection.jetstream()
    for spec in specs:
        config = _stream_config(spec)
        try:
            await js.stream_info(spec.name)
        except NotFoundError:
            await js.add_stream(config)
            log.info("created JetStream stream %s", spec.name)
        else:
            await js.update_stream(config)
