"""The usage ledger: one row per request, written idempotently, summed for reports.

Plain SQLAlchemy 2.0 over an ``AsyncEngine``; the same code runs on SQLite (one machine) and on
PostgreSQL (shared by every accounting replica). No bus code here.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Insert, event, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from contracts.v1 import UsageEvent, UsageQuery, UsageReport
from services.accounting import reports
from services.accounting.migrate import upgrade_ledger
from services.accounting.pricing import Charge
from services.accounting.tables import (
    BIGINT_MAX,
    Base,
    RouteShadowRecord,
    UnstorableUsage,
    UsageRecord,
    UtcDateTime,
    utc_from_unix,
)

__all__ = ["Base", "Ledger", "RouteShadowRecord", "UnstorableUsage", "UsageRecord", "UtcDateTime", "make_engine",
           "utc_from_unix"]

log = logging.getLogger(__name__)



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
        _use_wal(url.database)
    engine = create_async_engine(url)
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _use_wal(path: str) -> None:
    """Put the SQLite file in WAL mode (it stays so: the mode is kept in the file), which lets the
    report command read while the service writes.

    Done once, here, before the engine's connections exist: switching the mode takes an exclusive
    lock, and done by every new connection (it was, on connect) it could fail with "database is
    locked" while another connection of the same process was in a transaction, as when replicas
    start at once."""
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Concurrent writers wait up to busy_timeout for the lock instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _checked(request_id: str, counts: dict[str, int], signed: bool = False) -> dict[str, int]:
    low = -BIGINT_MAX if signed else 0
    for name, value in counts.items():
        if not low <= value <= BIGINT_MAX:
            raise UnstorableUsage(f"{name}={value} of request {request_id} does not fit the ledger")
    return counts


def _row(usage: UsageEvent, charge: Charge, recorded_at: datetime) -> dict[str, Any]:
    counts = _checked(usage.request_id, {
        "prompt_tokens": usage.prompt_tokens,
        "cached_prompt_tokens": usage.cached_prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cost_nanousd": charge.cost_nanousd,
        "reference_nanousd": charge.counterfactual_nanousd,
        "cache_saved_nanousd": charge.cache_saved_nanousd,
        "prefix_saved_nanousd": charge.prefix_saved_nanousd,
        "bulk_saved_nanousd": charge.bulk_saved_nanousd,
    })
    signed = _checked(usage.request_id, {"routing_saved_nanousd": charge.routing_saved_nanousd,
                                         "fallback_saved_nanousd": charge.fallback_saved_nanousd,
                                         "cascade_saved_nanousd": charge.cascade_saved_nanousd}, signed=True)
    return {
        **usage.model_dump(include={"request_id", "tenant", "api_key_id", "model", "tier", "status",
                                    "queue_seconds", "engine_seconds", "worker", "cache_outcome",
                                    "cache_similarity", "cache_source_tier", "cache_shadow",
                                    "cache_shadow_similarity", "cache_shadow_match", "route_policy",
                                    "route_score", "route_threshold", "fallback_from", "escalated_from",
                                    "job_id"}),
        **counts,
        **signed,
        # The tier the counterfactual was priced on (the event's, unless that one has no price).
        "counterfactual_tier": charge.counterfactual_tier or usage.counterfactual_tier,
        "priority": usage.priority.value,
        "occurred_at": utc_from_unix(usage.occurred_at),
        "recorded_at": recorded_at,
        "priced": charge.priced,
    }


def _shadow_rows(usage: UsageEvent, charge: Charge) -> list[dict[str, Any]]:
    """One row per candidate policy named in ``usage`` (the first pick of a repeated name)."""
    costs = {s.policy: s for s in charge.shadow}
    rows: dict[str, dict[str, Any]] = {}
    for pick in usage.route_shadow:
        if pick.policy in rows:
            continue
        cost = costs.get(pick.policy)
        rows[pick.policy] = {
            "request_id": usage.request_id, "policy": pick.policy, "tier": pick.tier, "score": pick.score,
            "threshold": pick.threshold, "cost_nanousd": cost.cost_nanousd if cost else None,
            "live_cost_nanousd": cost.live_cost_nanousd if cost else None,
        }
    return list(rows.values())


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
        shadow = _shadow_rows(usage, charge)
        stmt = self._insert_new(row).returning(UsageRecord.request_id)
        async with self._engine.begin() as conn:
            inserted = (await conn.execute(stmt)).first() is not None
            # Only the write that created the request adds its picks: a redelivery adds nothing.
            if inserted and shadow:
                await conn.execute(insert(RouteShadowRecord), shadow)
        return inserted

    def _insert_new(self, row: dict[str, Any]) -> Insert:
        """INSERT that leaves an existing row with the same request_id alone."""
        key = [UsageRecord.request_id]
        if self._dialect == "postgresql":
            return postgresql.insert(UsageRecord).values(**row).on_conflict_do_nothing(index_elements=key)
        return sqlite.insert(UsageRecord).values(**row).on_conflict_do_nothing(index_elements=key)

    async def totals(self, query: UsageQuery) -> UsageReport:
        """Totals per tenant and tier, and the shadow policies' comparison, of requests that
        occurred at or after ``query.since`` (of ``query.tenant`` and of ``query.job_id``'s items
        when set; see ``services.accounting.reports``)."""
        async with self._engine.connect() as conn:
            return await reports.usage_report(conn, query)

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
