"""The one way services get a NATS broker: tracing always attached, streams ensured."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import TracebackType

from faststream.nats import NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from opentelemetry.sdk.trace import TracerProvider

from contracts.subjects import StreamSpec
from services.shared import natscompat
from services.shared.settings import ServiceSettings

log = logging.getLogger(__name__)


class Broker(NatsBroker):
    """FastStream's broker, whose ``stop`` also ends a connection it cannot drain.

    FastStream's ``stop`` drains the connection, and nats-py refuses to drain one that is
    reconnecting (``ConnectionReconnectingError``) or fails part-way when the bus goes away
    during the drain. The connection then stays open, its reconnect task retrying forever
    (``max_reconnect_attempts=-1``), and ``stop`` raises, so a service's ``close`` skipped the
    rest of its clean-up. Here the connection is closed instead, and ``stop`` returns: what was
    not delivered was lost with the bus either way.
    """

    async def stop(self, exc_type: type[BaseException] | None = None, exc_val: BaseException | None = None,
                   exc_tb: TracebackType | None = None) -> None:
        connection = self._connection
        try:
            await super().stop(exc_type, exc_val, exc_tb)
        except Exception as exc:
            log.warning("could not drain the bus connection (%r); closing it", exc)
            if connection is not None and not connection.is_closed:
                try:
                    await connection.close()
                except Exception as close_exc:  # its last flush, on a socket that is gone
                    log.warning("closing the bus connection: %r", close_exc)
            self._connection = None
            self.config.disconnect()


def make_broker(
    service_name: str, settings: ServiceSettings, tracer_provider: TracerProvider | None
) -> NatsBroker:
    """A broker whose every publish and handled message is a span (trace context travels in
    message headers, so one request is one trace across all services)."""
    natscompat.apply()
    return Broker(
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
