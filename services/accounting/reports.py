"""Usage reports summed in SQL: totals per tenant and tier with the levers' savings, and the
shadow routing policies against the live one. Plain SQLAlchemy; the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.v1 import UsageQuery, UsageReport, UsageRow
from contracts.v1.events import ShadowPolicyRow
from services.accounting.pricing import CACHE_HITS, nanos_to_usd
from services.accounting.tables import RouteShadowRecord, UsageRecord, utc_from_unix

#: The tier the live policy picked: the one that answered, or the one that was down when a
#: fallback answered (it was picked, then found unavailable).
_LIVE_PICK = func.coalesce(UsageRecord.fallback_from, UsageRecord.tier)


async def usage_report(conn: AsyncConnection, query: UsageQuery) -> UsageReport:
    """The report for ``query``: rows ordered by tenant and tier, shadow policies by name."""
    return UsageReport(rows=await _rows(conn, query), shadow=await _shadow(conn, query))


def _filtered(stmt: Select[Any], query: UsageQuery) -> Select[Any]:
    if query.tenant is not None:
        stmt = stmt.where(UsageRecord.tenant == query.tenant)
    if query.since is not None:
        stmt = stmt.where(UsageRecord.occurred_at >= utc_from_unix(query.since))
    if query.job_id is not None:
        stmt = stmt.where(UsageRecord.job_id == query.job_id)
    return stmt


def _count(condition: Any) -> Any:
    return func.sum(case((condition, 1), else_=0))


async def _rows(conn: AsyncConnection, query: UsageQuery) -> list[UsageRow]:
    r = UsageRecord
    sums = (r.prompt_tokens, r.cached_prompt_tokens, r.completion_tokens, r.cost_nanousd, r.reference_nanousd,
            r.cache_saved_nanousd, r.routing_saved_nanousd, r.fallback_saved_nanousd, r.prefix_saved_nanousd,
            r.bulk_saved_nanousd, r.cascade_saved_nanousd)
    stmt = _filtered(
        select(r.tenant, r.tier, func.count(), _count(r.cache_outcome.in_(CACHE_HITS)),
               _count(r.route_policy.is_not(None)), _count(r.fallback_from.is_not(None)),
               _count(r.escalated_from.is_not(None)),
               *(func.sum(column) for column in sums))
        .group_by(r.tenant, r.tier).order_by(r.tenant, r.tier),
        query)
    rows = []
    for tenant, tier, *figures in await conn.execute(stmt):
        # PostgreSQL sums BIGINT into NUMERIC: bring every sum back to int.
        (n, hits, routed, fallbacks, escalations, prompt, cached, completion, cost, ref, cache, routing, fallback,
         prefix, bulk, cascade) = (int(x) for x in figures)
        rows.append(UsageRow(
            tenant=tenant, tier=tier, requests=n, prompt_tokens=prompt, cached_prompt_tokens=cached,
            completion_tokens=completion, cost_usd=nanos_to_usd(cost), reference_cost_usd=nanos_to_usd(ref),
            cache_hits=hits, cache_saved_usd=nanos_to_usd(cache), routed_requests=routed,
            routing_saved_usd=nanos_to_usd(routing), fallbacks=fallbacks, fallback_saved_usd=nanos_to_usd(fallback),
            prefix_saved_usd=nanos_to_usd(prefix), bulk_saved_usd=nanos_to_usd(bulk), escalations=escalations,
            cascade_saved_usd=nanos_to_usd(cascade)))
    return rows


@dataclass
class _PolicyTotals:
    requests: int = 0
    agreed: int = 0
    tiers: Counter[str] = field(default_factory=Counter)
    live_tiers: Counter[str] = field(default_factory=Counter)
    cost: int = 0
    live_cost: int = 0
    unpriced: int = 0


async def _shadow(conn: AsyncConnection, query: UsageQuery) -> list[ShadowPolicyRow]:
    s = RouteShadowRecord
    priced = s.cost_nanousd.is_not(None)
    stmt = _filtered(
        select(s.policy, s.tier, _LIVE_PICK, func.count(), _count(~priced),
               func.coalesce(func.sum(s.cost_nanousd), 0), func.coalesce(func.sum(s.live_cost_nanousd), 0))
        .join(UsageRecord, UsageRecord.request_id == s.request_id)
        .group_by(s.policy, s.tier, _LIVE_PICK),
        query)
    totals: dict[str, _PolicyTotals] = {}
    for policy, tier, live, n, unpriced, cost, live_cost in await conn.execute(stmt):
        t = totals.setdefault(policy, _PolicyTotals())
        n = int(n)
        t.requests += n
        t.agreed += n if tier == live else 0
        t.tiers[tier] += n
        t.live_tiers[live] += n
        t.cost += int(cost)
        t.live_cost += int(live_cost)
        t.unpriced += int(unpriced)
    return [ShadowPolicyRow(policy=policy, requests=t.requests, agreed=t.agreed, tiers=dict(sorted(t.tiers.items())),
                            live_tiers=dict(sorted(t.live_tiers.items())), cost_usd=nanos_to_usd(t.cost),
                            live_cost_usd=nanos_to_usd(t.live_cost), unpriced=t.unpriced)
            for policy, t in sorted(totals.items())]
