"""The ledger's tables, as SQLAlchemy models. Alembic owns the schema: a change here needs a new
revision in ``migrations/versions/`` (``infra/README.md``, "Ledger migrations"), or the tests fail."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Dialect, Float, ForeignKey, Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

#: Largest value a BIGINT column holds, on every database we run on.
BIGINT_MAX = 2**63 - 1


class UnstorableUsage(ValueError):
    """The event holds a value no ledger column can hold (a timestamp out of range, a count past
    BIGINT). Retrying cannot help: the message is poison."""


def utc_from_unix(seconds: float) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise UnstorableUsage(f"unix time {seconds!r} is not a representable date") from exc


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL keeps the zone (``timestamptz``); SQLite drops it, so values are stored as UTC and
    given the UTC zone back when read. Naive datetimes are refused: their zone is a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: give it a timezone")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    """The ledger's tables. Alembic owns the schema: a change here needs a new revision in
    ``migrations/versions/`` (``infra/README.md``, "Ledger migrations"), or the tests fail."""


class UsageRecord(Base):
    """One charged request. ``request_id`` is the idempotency key: a redelivery adds nothing."""

    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_records_tenant_occurred", "tenant", "occurred_at"),)

    request_id: Mapped[str] = mapped_column(String, primary_key=True)
    tenant: Mapped[str] = mapped_column(String)
    api_key_id: Mapped[str] = mapped_column(String)
    model: Mapped[str] = mapped_column(String)
    tier: Mapped[str] = mapped_column(String)
    priority: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(String)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    queue_seconds: Mapped[float] = mapped_column(Float)
    engine_seconds: Mapped[float] = mapped_column(Float)
    worker: Mapped[str] = mapped_column(String)
    cache_outcome: Mapped[str] = mapped_column(String)
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime())
    cost_nanousd: Mapped[int] = mapped_column(BigInteger)
    #: The counterfactual (the name is revision 0001's, when it was priced on a fixed reference tier).
    reference_nanousd: Mapped[int] = mapped_column(BigInteger)
    priced: Mapped[bool] = mapped_column()
    # Revision 0002: the cache lever.
    cache_similarity: Mapped[float | None] = mapped_column(Float, nullable=True)
    cache_source_tier: Mapped[str | None] = mapped_column(String, nullable=True)
    cache_saved_nanousd: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_shadow: Mapped[str] = mapped_column(String, server_default="none")
    cache_shadow_similarity: Mapped[float | None] = mapped_column(Float, nullable=True)
    cache_shadow_match: Mapped[bool | None] = mapped_column(nullable=True)
    # Revision 0003: routing, and the levers split in order (pricing.py). Rows written before it
    # have the defaults: no lever credited, their counterfactual on the old reference tier.
    counterfactual_tier: Mapped[str | None] = mapped_column(String, nullable=True)
    route_policy: Mapped[str | None] = mapped_column(String, nullable=True)
    route_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    route_threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    fallback_from: Mapped[str | None] = mapped_column(String, nullable=True)
    routing_saved_nanousd: Mapped[int] = mapped_column(BigInteger, server_default="0")
    fallback_saved_nanousd: Mapped[int] = mapped_column(BigInteger, server_default="0")
    prefix_saved_nanousd: Mapped[int] = mapped_column(BigInteger, server_default="0")
    bulk_saved_nanousd: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # Revision 0004: the cascade (a weak attempt that failed the cheap check, charged on top).
    escalated_from: Mapped[str | None] = mapped_column(String, nullable=True)
    cascade_saved_nanousd: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # Revision 0005: the bulk job (batch id) a request was an item of, for a job's totals.
    job_id: Mapped[str | None] = mapped_column(String, nullable=True, index=True)


class RouteShadowRecord(Base):
    """What one candidate routing policy picked for a recorded request (never acted on), and what
    that pick and the live one cost, priced alike. Written with its request, only if that is new."""

    __tablename__ = "usage_route_shadow"

    request_id: Mapped[str] = mapped_column(String, ForeignKey("usage_records.request_id"), primary_key=True)
    policy: Mapped[str] = mapped_column(String, primary_key=True)
    tier: Mapped[str] = mapped_column(String)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: None: its tier or the live one has no price.
    cost_nanousd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    live_cost_nanousd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
