"""The usage ledger: one row per request, written idempotently, summed for reports.

Plain SQLAlchemy 2.0 over an ``AsyncEngine``; the same code runs on SQLite (one machine) and on
PostgreSQL (shared by every accounting replica). No bus code here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, DateTime, Dialect, Float, Index, Insert, String, case, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from contracts.v1 import UsageEvent, UsageQuery, UsageReport, UsageRow
from services.accounting.migrate import upgrade_ledger
from services.accounting.pricing import Charge, nanos_to_usd

log = logging.getLogger(__name__)

#: Cache outcomes that served an answer (``contracts.v1.CacheOutcome``).
CACHE_HITS = ("exact", "semantic")
#: Largest value a BIGINT column holds, on every database we run on.
_BIGINT_MAX = 2**63 - 1


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
    reference_nanousd: Mapped[int] = mapped_column(BigInteger)
    priced: Mapped[bool] = mapped_column()
    # Revision 0002: the cache lever.
    cache_similarity: Mapped[float | None] = mapped_column(Float, nullable=True)
    cache_source_tier: Mapped[str | None] = mapped_column(String, nullable=True)
    cache_saved_nanousd: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_shadow: Mapped[str] = mapped_column(String, server_default="none")
    cache_shadow_similarity: Mapped[float | None] = mapped_column(Float, nullable=True)
    cache_shadow_match: Mapped[bool | None] = mapped_column(nullable=True)


class UnstorableUsage(ValueError):
    """The event holds a value no ledger column can hold (a timestamp out of range, a count past
    BIGINT). Retrying cannot help: the message is poison."""


#: The databases the ledger runs on (``INSERT .. ON CONFLICT DO NOTHING`` is dialect-specific).
SUPPORTED_DIALECTS = ("sqlite", "postgresql")


def make_engine(database_url: str) -> AsyncEngine:
    """An engine for the ledger at ``database_url`` (creating a SQLite file's folder if needed)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        # Connections die when the server restarts; test them before use instead of failing a write.
        return create_async_engine(url, pool_pre_ping=True)
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url)
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the report command read while the service writes; concurrent writers wait up to
    # busy_timeout for the lock instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def utc_from_unix(seconds: float) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise UnstorableUsage(f"unix time {seconds!r} is not a representable date") from exc


def _row(usage: UsageEvent, charge: Charge, recorded_at: datetime) -> dict[str, Any]:
    counts = {
        "prompt_tokens": usage.prompt_tokens,
        "cached_prompt_tokens": usage.cached_prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cost_nanousd": charge.cost_nanousd,
        "reference_nanousd": charge.reference_nanousd,
        "cache_saved_nanousd": charge.cache_saved_nanousd,
    }
    for name, value in counts.items():
        if not 0 <= value <= _BIGINT_MAX:
            raise UnstorableUsage(f"{name}={value} of request {usage.request_id} does not fit the ledger")
    return {
        **usage.model_dump(include={"request_id", "tenant", "api_key_id", "model", "tier", "status",
                                    "queue_seconds", "engine_seconds", "worker", "cache_outcome",
                                    "cache_similarity", "cache_source_tier", "cache_shadow",
                                    "cache_shadow_similarity", "cache_shadow_match"}),
        **counts,
        "priority": usage.priority.value,
        "occurred_at": utc_from_unix(usage.occurred_at),
        "recorded_at": recorded_at,
        "priced": charge.priced,
    }


class Ledger:
    """Usage records in a SQL database.

    Contract: ``record`` is idempotent by ``request_id`` (the first write wins, later ones change
    nothing) and returns only after the row is committed, so the caller may acknowledge the
    event then. Database errors propagate unchanged; the caller decides whether to retry.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        dialect = engine.dialect.name
        if dialect not in SUPPORTED_DIALECTS:
            raise ValueError(f"the ledger runs on SQLite or PostgreSQL, not {dialect!r}")
        self._engine = engine
        self._dialect = dialect
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def create_schema(self) -> str:
        """Create the tables, or upgrade them, to the newest migration and return its revision.

        Idempotent and safe when every replica calls it at once; raises ``LedgerSchemaError`` for
        a database this code cannot use (see ``services.accounting.migrate.upgrade_ledger``).
        """
        return await upgrade_ledger(self._engine)

    async def record(self, usage: UsageEvent, charge: Charge) -> bool:
        """Store one charged request; True if it is new, False if ``request_id`` was there already.

        Raises ``UnstorableUsage`` for values no column can hold.
        """
        row = _row(usage, charge, recorded_at=datetime.now(UTC))
        stmt = self._insert_new(row).returning(UsageRecord.request_id)
        async with self._engine.begin() as conn:
            inserted = (await conn.execute(stmt)).first() is not None
        return inserted

    def _insert_new(self, row: dict[str, Any]) -> Insert:
        """INSERT that leaves an existing row with the same request_id alone."""
        key = [UsageRecord.request_id]
        if self._dialect == "postgresql":
            return postgresql.insert(UsageRecord).values(**row).on_conflict_do_nothing(index_elements=key)
        return sqlite.insert(UsageRecord).values(**row).on_conflict_do_nothing(index_elements=key)

    async def totals(self, query: UsageQuery) -> UsageReport:
        """Totals per tenant and tier, of requests that occurred at or after ``query.since``."""
        r = UsageRecord
        stmt = (
            select(r.tenant, r.tier, func.count(), func.sum(r.prompt_tokens),
                   func.sum(r.cached_prompt_tokens), func.sum(r.completion_tokens),
                   func.sum(r.cost_nanousd), func.sum(r.reference_nanousd),
                   func.sum(case((r.cache_outcome.in_(CACHE_HITS), 1), else_=0)),
                   func.sum(r.cache_saved_nanousd))
            .group_by(r.tenant, r.tier)
            .order_by(r.tenant, r.tier)
        )
        if query.tenant is not None:
            stmt = stmt.where(r.tenant == query.tenant)
        if query.since is not None:
            stmt = stmt.where(r.occurred_at >= utc_from_unix(query.since))
        async with self._engine.connect() as conn:
            result = await conn.execute(stmt)
            rows = [
                # PostgreSQL sums BIGINT into NUMERIC: bring every sum back to int.
                UsageRow(tenant=tenant, tier=tier, requests=int(n), prompt_tokens=int(prompt),
                         cached_prompt_tokens=int(cached), completion_tokens=int(completion),
                         cost_usd=nanos_to_usd(int(cost)), reference_cost_usd=nanos_to_usd(int(ref)),
                         cache_hits=int(hits), cache_saved_usd=nanos_to_usd(int(saved)))
                for tenant, tier, n, prompt, cached, completion, cost, ref, hits, saved in result
            ]
        return UsageReport(rows=rows)

    async def get(self, request_id: str) -> UsageRecord | None:
        async with self._sessions() as session:
            return await session.get(UsageRecord, request_id)

    async def requests(self, request_ids: Iterable[str]) -> list[UsageRecord]:
        """The records of ``request_ids`` that exist, in no particular order."""
        async with self._sessions() as session:
            found = await session.scalars(
                select(UsageRecord).where(UsageRecord.request_id.in_(list(request_ids)))
            )
            return list(found)
