"""Accounting on the bus: usage events pulled from JetStream into the ledger; totals on request.

Every replica binds to the same durable pull consumer, so replicas share the events between
them, and each event is acknowledged only once its row is committed: a replica that dies
mid-write loses nothing, and the redelivered event is absorbed by the ledger's idempotency.
"""

from __future__ import annotations

import logging

from faststream.middlewares import AckPolicy
from faststream.nats import JStream, PullSub
from faststream.nats.annotations import NatsMessage
from nats.errors import NotJSMessageError
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig
from pydantic import ValidationError
from sqlalchemy.exc import DataError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.subjects import (
    ACCOUNTING_DURABLE,
    ACCOUNTING_QUEUE_GROUP,
    USAGE_QUERY_SUBJECT,
    USAGE_STREAM,
    USAGE_SUBJECT,
)
from contracts.v1 import UsageEvent, UsageQuery, UsageReport
from services.accounting.ledger import Ledger, UnstorableUsage, make_engine
from services.accounting.pricing import UNPRICED, Charge, PriceBook, UnknownTier
from services.accounting.settings import AccountingSettings
from services.shared import metrics
from services.shared.broker import ensure_streams, is_connected, make_broker
from services.shared.deployment import load_pricebook
from services.shared.telemetry import setup_tracing
from services.shared.validation import summary

log = logging.getLogger(__name__)


def consumer_config(settings: AccountingSettings) -> ConsumerConfig:
    """The durable consumer every replica binds to."""
    return ConsumerConfig(
        name=ACCOUNTING_DURABLE,
        durable_name=ACCOUNTING_DURABLE,
        filter_subject=USAGE_SUBJECT,
        ack_policy=JsAckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_s,
        max_deliver=settings.max_deliveries,
        max_ack_pending=settings.max_ack_pending,
    )


def retry_delay(settings: AccountingSettings, deliveries: int) -> float:
    """Redelivery delay after ``deliveries`` failed attempts: doubling, capped."""
    exponent = min(max(deliveries - 1, 0), 30)
    return min(settings.retry_backoff_s * 2**exponent, settings.retry_backoff_max_s)


class AccountingService:
    """Prices usage events, records them in the ledger, and answers usage queries."""

    name = "accounting"

    def __init__(self, settings: AccountingSettings, pricebook: PriceBook | None = None) -> None:
        self.settings = settings
        # Validated here, before anything connects: a typo in the price book stops start-up.
        if pricebook is None:
            pricebook = load_pricebook(settings.pricebook_file)
        self.pricebook = pricebook
        self.engine: AsyncEngine | None = None
        self.ledger: Ledger | None = None
        self.broker = make_broker(self.name, settings, setup_tracing(self.name, settings))
        self._usage = self.broker.subscriber(
            USAGE_SUBJECT,
            # declare=False: ensure_streams owns the stream's configuration (its dedup window);
            # FastStream's own declaration would overwrite it with defaults.
            stream=JStream(USAGE_STREAM.name, declare=False),
            durable=ACCOUNTING_DURABLE,
            config=consumer_config(settings),
            pull_sub=PullSub(batch_size=settings.consumer_batch_size, timeout=settings.fetch_timeout_s),
            # Acknowledgement depends on what went wrong (see on_usage), so it is done by hand.
            ack_policy=AckPolicy.MANUAL,
            no_reply=True,
            title="usage-events",
            description="UsageEvent messages (JSON), one per finished request; charged once each.",
        )
        self._usage(self.on_usage)
        self._query = self.broker.subscriber(
            USAGE_QUERY_SUBJECT, queue=ACCOUNTING_QUEUE_GROUP, title="usage-query",
            description="Request/reply: a UsageQuery answered with a UsageReport.",
        )
        self._query(self.on_query)

    # --- handlers -------------------------------------------------------------------------
    async def on_usage(self, msg: NatsMessage) -> None:
        """Charge one usage event: ack once committed, nack on a database failure (redelivered
        with backoff), reject a message that can never be stored (poison).

        The body is parsed here rather than by FastStream: a typed argument would fail before
        this handler runs, and with manual acks nothing would then reject the poison message.
        """
        try:
            usage = UsageEvent.model_validate_json(msg.body)
        except ValidationError as exc:
            log.error("rejecting a malformed usage event (stream seq %s): %s",
                      _stream_seq(msg), summary(exc))
            metrics.USAGE_EVENTS.labels("rejected").inc()
            await msg.reject()
            return
        assert self.ledger is not None, "on_usage runs only after start()"
        charge = self.charge(usage)
        try:
            new = await self.ledger.record(usage, charge)
        except (UnstorableUsage, DataError) as exc:
            log.error("rejecting usage event %s: the ledger cannot store it: %s", usage.request_id, exc)
            metrics.USAGE_EVENTS.labels("rejected").inc()
            await msg.reject()
            return
        except (SQLAlchemyError, OSError) as exc:
            delay = retry_delay(self.settings, _deliveries(msg))
            log.warning("ledger write of %s failed (%s); redelivery in %.1f s", usage.request_id,
                        exc.__class__.__name__, delay)
            metrics.USAGE_EVENTS.labels("retried").inc()
            await msg.nack(delay=delay)
            return
        await msg.ack()
        if not new:
            log.debug("usage event %s was already recorded", usage.request_id)
            metrics.USAGE_EVENTS.labels("duplicate").inc()
            return
        metrics.USAGE_EVENTS.labels("recorded" if charge.priced else "unpriced").inc()
        observe_charge(usage, charge)

    async def on_query(self, query: UsageQuery) -> UsageReport:
        assert self.ledger is not None, "on_query runs only after start()"
        return await self.ledger.totals(query)

    def charge(self, usage: UsageEvent) -> Charge:
        """Price ``usage``; an unpriceable one is still recorded (cost 0, flagged), never dropped."""
        try:
            return self.pricebook.price(usage)
        except UnknownTier as exc:
            log.error("request %s recorded unpriced: %s", usage.request_id, exc)
            return UNPRICED

    # --- Service --------------------------------------------------------------------------
    async def open_ledger(self) -> AsyncEngine:
        """Connect to the ledger database and bring its schema to the newest migration (creating
        it on an empty database); raises ``LedgerSchemaError`` for one this code cannot use."""
        self.engine = engine = make_engine(self.settings.database_url)
        self.ledger = Ledger(engine)
        revision = await self.ledger.create_schema()
        log.info("ledger schema at revision %s", revision)
        return engine

    async def start(self) -> None:
        engine = await self.open_ledger()
        # The stream must exist before the subscriber binds its durable consumer to it.
        await self.broker.connect()
        await ensure_streams(self.broker, (USAGE_STREAM,))
        # Create the consumer, or update it to these settings: binding alone would keep the
        # settings of whichever replica created it first, and a changed ack wait would be ignored.
        js = self.broker.connection.jetstream()
        await js.add_consumer(USAGE_STREAM.name, consumer_config(self.settings))
        await self.broker.start()
        log.info("charging usage from %s into %s", USAGE_STREAM.name, engine.url.render_as_string())

    async def drain(self) -> None:
        # Stop pulling; the events already pulled finish (FastStream waits for them up to the
        # broker's graceful timeout). Queries are still answered until close.
        await self._usage.stop()

    async def close(self) -> None:
        await self.broker.stop()
        if self.engine is not None:
            await self.engine.dispose()

    def ready(self) -> tuple[bool, dict[str, object]]:
        connected = is_connected(self.broker)
        return connected and self.ledger is not None, {"bus": connected, "ledger": self.ledger is not None}


def observe_charge(usage: UsageEvent, charge: Charge) -> None:
    """What one newly recorded charge tells the metrics: the cost, the counterfactual, the levers.

    Counters only go up: routing's share goes to the saved counter when it saved, to the extra-cost
    one when it sent the request to a dearer tier (net = saved - extra). A fallback's tier
    difference is in the ledger only; fallbacks are counted where they happen.
    """
    tenant, tier = usage.tenant, usage.tier
    labels = (tenant, tier, usage.priority.value)
    metrics.COST.labels(*labels, "actual").inc(charge.cost_nanousd / 1e9)
    # kind=reference is the counterfactual (the label kept its first name for existing dashboards).
    metrics.COST.labels(*labels, "reference").inc(charge.counterfactual_nanousd / 1e9)
    if charge.cache_saved_nanousd:
        metrics.CACHE_SAVED.labels(tenant, usage.cache_source_tier or tier).inc(charge.cache_saved_nanousd / 1e9)
    if charge.routing_saved_nanousd > 0:
        metrics.ROUTING_SAVED.labels(tenant, tier).inc(charge.routing_saved_nanousd / 1e9)
    elif charge.routing_saved_nanousd < 0:
        metrics.ROUTING_EXTRA_COST.labels(tenant, tier).inc(-charge.routing_saved_nanousd / 1e9)
    for lever, nanos in (("prefix", charge.prefix_saved_nanousd), ("bulk", charge.bulk_saved_nanousd)):
        if nanos:
            metrics.LEVER_SAVED.labels(tenant, tier, lever).inc(nanos / 1e9)
    if charge.cascade_saved_nanousd:
        metrics.CASCADE_COST.labels(tenant, usage.escalated_from or tier).inc(-charge.cascade_saved_nanousd / 1e9)


def _stream_seq(msg: NatsMessage) -> int | None:
    """The message's stream sequence, for logs (None for a message that did not come from JetStream)."""
    try:
        return int(msg.raw_message.metadata.sequence.stream)
    except NotJSMessageError:
        return None


def _deliveries(msg: NatsMessage) -> int:
    """How often JetStream delivered the message so far (1 for one that did not come from it)."""
    try:
        return int(msg.raw_message.metadata.num_delivered)
    except NotJSMessageError:
        return 1
