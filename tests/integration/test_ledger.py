"""The ledger on a real database: SQLite in a temporary folder, and PostgreSQL when one answers:
idempotent writes, every field kept (routing and the levers too), totals, shadow policies, tables.

These touch a database, so they carry the ``integration`` marker (its definition covers SQL)
even though they need no bus and run in milliseconds.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts.subjects import Priority
from contracts.v1 import ShadowPick, UsageEvent, UsageQuery
from services.accounting.__main__ import main, report
from services.accounting.ledger import Ledger, UnstorableUsage, make_engine
from services.accounting.pricing import UNPRICED, Charge, PriceBook
from services.accounting.settings import AccountingSettings
from services.shared.usage_table import render_table

pytestmark = pytest.mark.integration

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def pg_answers() -> bool:
    url = make_url(PG_URL)
    try:
        with socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def docker_pg_url() -> Iterator[str]:
    """A throw-away PostgreSQL in a container, only where a Docker engine answers."""
    docker = pytest.importorskip("docker")
    try:
        docker.from_env().ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"no Docker engine answers: {exc}")
    from testcontainers.community.postgres import PostgresContainer

    with PostgresContainer("postgres:16-alpine", driver="asyncpg") as pg:
        yield pg.get_connection_url()


async def engine_in_own_schema(url: str) -> tuple[AsyncEngine, str]:
    """An engine whose tables live in a fresh schema, so a shared database is left as it was for
    anybody else using it."""
    schema = f"sf_ledger_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(url)
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    await admin.dispose()
    engine = create_async_engine(url, connect_args={"server_settings": {"search_path": schema}})
    return engine, schema


async def drop_schema(url: str, schema: str) -> None:
    admin = create_async_engine(url)
    async with admin.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    await admin.dispose()


async def open_engine(backend: str, request: pytest.FixtureRequest,
                      tmp_path: Path) -> tuple[AsyncEngine, str | None]:
    """An engine on ``backend``, and the schema to drop afterwards (PostgreSQL only)."""
    if backend == "sqlite":
        # A folder that does not exist yet: the engine factory creates it.
        return make_engine(f"sqlite+aiosqlite:///{tmp_path}/db/ledger.db"), None
    if backend == "postgres" and not pg_answers():
        pytest.skip(f"no PostgreSQL answers at {PG_URL}")
    url = PG_URL if backend == "postgres" else request.getfixturevalue("docker_pg_url")
    engine, schema = await engine_in_own_schema(url)
    return engine, schema


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "docker-postgres"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    engine, schema = await open_engine(request.param, request, tmp_path)
    ledger = Ledger(engine)
    await ledger.create_schema()
    await ledger.create_schema()  # idempotent: every replica calls it at start-up
    try:
        yield ledger
    finally:
        await engine.dispose()
        if schema is not None:
            await drop_schema(engine.url.render_as_string(hide_password=False), schema)


def usage(request_id: str, tenant: str = "acme", tier: str = "small", prompt: int = 100,
          cached: int = 0, completion: int = 10, occurred_at: float = 1_700_000_000.0) -> UsageEvent:
    return UsageEvent(request_id=request_id, tenant=tenant, model="m", tier=tier,
                      priority=Priority.INTERACTIVE, status="ok", prompt_tokens=prompt,
                      cached_prompt_tokens=cached, completion_tokens=completion,
                      occurred_at=occurred_at)


async def test_same_request_id_twice_is_one_row(ledger: Ledger) -> None:
    first = Charge(cost_nanousd=1_000, counterfactual_nanousd=5_000)
    assert await ledger.record(usage("r1"), first) is True
    # A redelivery (even with different figures) changes nothing: the first write wins.
    assert await ledger.record(usage("r1", prompt=999), Charge(7, 7)) is False
    rows = await ledger.requests(["r1", "missing"])
    assert [r.request_id for r in rows] == ["r1"]
    assert (rows[0].prompt_tokens, rows[0].cost_nanousd, rows[0].reference_nanousd) == (100, 1_000, 5_000)


async def test_concurrent_duplicates_are_one_row(ledger: Ledger) -> None:
    results = await asyncio.gather(*(ledger.record(usage("dup"), Charge(1, 1)) for _ in range(8)))
    assert sorted(results) == [False] * 7 + [True]


async def test_record_keeps_every_field(ledger: Ledger) -> None:
    event = usage("r2", cached=40, occurred_at=1_700_000_123.5)
    await ledger.record(event, UNPRICED)
    row = await ledger.get("r2")
    assert row is not None
    assert row.occurred_at == datetime(2023, 11, 14, 22, 15, 23, 500000, tzinfo=UTC)
    assert row.recorded_at.tzinfo is not None
    assert (row.tenant, row.tier, row.priority, row.status) == ("acme", "small", "interactive", "ok")
    assert (row.cached_prompt_tokens, row.priced, row.cost_nanousd) == (40, False, 0)
    assert await ledger.get("nope") is None


async def test_totals_per_tenant_and_tier(ledger: Ledger) -> None:
    await ledger.record(usage("a1", prompt=100, cached=10, completion=5),
                        Charge(1_500_000_000, 3_000_000_000))
    await ledger.record(usage("a2", prompt=200, completion=7), Charge(1, 2))
    await ledger.record(usage("a3", tier="large"), Charge(10, 10))
    await ledger.record(usage("b1", tenant="beta"), Charge(5, 6))
    report = await ledger.totals(UsageQuery())
    summary = [(r.tenant, r.tier, r.requests, r.prompt_tokens, r.cached_prompt_tokens, r.completion_tokens,
                r.cost_usd, r.reference_cost_usd) for r in report.rows]
    assert summary == [
        ("acme", "large", 1, 100, 0, 10, "0.000000010", "0.000000010"),
        ("acme", "small", 2, 300, 10, 12, "1.500000001", "3.000000002"),
        ("beta", "small", 1, 100, 0, 10, "0.000000005", "0.000000006"),
    ]


async def test_totals_filter_by_tenant_and_since(ledger: Ledger) -> None:
    await ledger.record(usage("old", occurred_at=1_000.0), Charge(1, 1))
    await ledger.record(usage("new", occurred_at=2_000.0), Charge(2, 2))
    await ledger.record(usage("other", tenant="beta", occurred_at=2_000.0), Charge(4, 4))
    since = await ledger.totals(UsageQuery(tenant="acme", since=2_000.0))  # "since" includes 2000
    assert [(r.tenant, r.requests, r.cost_usd) for r in since.rows] == [("acme", 1, "0.000000002")]
    assert (await ledger.totals(UsageQuery(tenant="nobody"))).rows == []


async def test_values_no_column_holds_are_refused(ledger: Ledger) -> None:
    with pytest.raises(UnstorableUsage, match="cost_nanousd"):
        await ledger.record(usage("big"), Charge(2**63, 0))
    with pytest.raises(UnstorableUsage, match="not a representable date"):
        await ledger.record(usage("future", occurred_at=1e20), Charge(0, 0))
    assert await ledger.requests(["big", "future"]) == []


# --- routing, the levers, shadow policies ----------------------------------------------------------
BOOK = PriceBook.model_validate({"currency": "USD", "tiers": {
    "small": {"input_per_mtok": "0.05", "cached_input_per_mtok": "0.01", "output_per_mtok": "0.10",
              "batch_discount": "0.5"},
    "large": {"input_per_mtok": "2.50", "cached_input_per_mtok": "1.25", "output_per_mtok": "10.00",
              "batch_discount": "0.5"}}})


def routed(request_id: str, tier: str = "small", shadow: tuple[str, ...] = ("large",),
           **fields: Any) -> UsageEvent:
    """An 'auto' request (counterfactual: large) the learned policy sent to ``tier``, with a
    candidate policy that picked ``shadow[0]`` (and more candidates for the rest)."""
    return usage(request_id, tier=tier, prompt=1000, completion=100).model_copy(update={
        "model": "auto", "counterfactual_tier": "large", "route_policy": "learned", "route_score": 0.25,
        "route_threshold": 0.5,
        "route_shadow": [ShadowPick(policy=f"cand{i}" if i else "strict", tier=t, score=0.6, threshold=0.3)
                         for i, t in enumerate(shadow)],
        **fields})


async def record(ledger: Ledger, event: UsageEvent) -> bool:
    return await ledger.record(event, BOOK.price(event))


async def test_routing_fields_and_levers_round_trip(ledger: Ledger) -> None:
    event = routed("r1", cached_prompt_tokens=400, priority=Priority.BULK)
    assert await record(ledger, event) is True
    row = await ledger.get("r1")
    assert row is not None
    assert (row.counterfactual_tier, row.route_policy, row.route_score, row.route_threshold, row.fallback_from) == (
        "large", "learned", 0.25, 0.5, None)
    # large full price 3,500,000; small full 60,000; small with 400 cached 44,000; bulk 22,000.
    assert (row.reference_nanousd, row.cost_nanousd) == (3_500_000, 22_000)
    assert (row.cache_saved_nanousd, row.routing_saved_nanousd, row.fallback_saved_nanousd,
            row.prefix_saved_nanousd, row.bulk_saved_nanousd) == (0, 3_440_000, 0, 16_000, 22_000)


async def test_a_negative_routing_saving_and_a_fallback_are_stored(ledger: Ledger) -> None:
    dearer = usage("up", tier="large", prompt=1000, completion=100).model_copy(update={
        "counterfactual_tier": "small", "route_policy": "rule:long-context"})
    fell = usage("down", tier="small", prompt=1000, completion=100).model_copy(update={
        "counterfactual_tier": "large", "fallback_from": "large"})
    await record(ledger, dearer)
    await record(ledger, fell)
    rows = {r.request_id: r for r in await ledger.requests(["up", "down"])}
    assert (rows["up"].routing_saved_nanousd, rows["up"].fallback_saved_nanousd) == (-3_440_000, 0)
    assert (rows["down"].routing_saved_nanousd, rows["down"].fallback_saved_nanousd) == (0, 3_440_000)
    assert rows["down"].fallback_from == "large"
    report = await ledger.totals(UsageQuery())
    assert [(r.tier, r.routed_requests, r.routing_saved_usd, r.fallbacks, r.fallback_saved_usd)
            for r in report.rows] == [("large", 1, "-0.003440000", 0, "0.000000000"),
                                      ("small", 0, "0.000000000", 1, "0.003440000")]


async def test_a_cascades_escalation_is_stored_and_reported(ledger: Ledger) -> None:
    event = routed("esc", tier="large").model_copy(update={
        "escalated_from": "small", "escalation_prompt_tokens": 1000, "escalation_completion_tokens": 48})
    await record(ledger, event)
    row = await ledger.get("esc")
    assert row is not None
    assert (row.escalated_from, row.cascade_saved_nanousd, row.cost_nanousd) == ("small", -54_800, 3_554_800)
    [large] = (await ledger.totals(UsageQuery())).rows
    assert (large.escalations, large.cascade_saved_usd) == (1, "-0.000054800")


async def test_a_redelivery_adds_no_shadow_pick(ledger: Ledger) -> None:
    event = routed("r1", shadow=("large", "small"))
    assert await record(ledger, event) is True
    assert await record(ledger, event) is False
    report = await ledger.totals(UsageQuery())
    assert [(s.policy, s.requests) for s in report.shadow] == [("cand1", 1), ("strict", 1)]


async def test_the_report_sums_the_levers_and_compares_shadow_policies(ledger: Ledger) -> None:
    # Three routed requests: two sent to small, one to large; the candidate 'strict' sends all to
    # large. One named-model request (no routing, no shadow) and one of another tenant.
    await record(ledger, routed("a"))
    await record(ledger, routed("b", cached_prompt_tokens=400))
    await record(ledger, routed("c", tier="large"))
    named = usage("named", prompt=1000, completion=100).model_copy(update={"counterfactual_tier": "small"})
    await record(ledger, named)
    await record(ledger, routed("other", tenant="beta"))
    report = await ledger.totals(UsageQuery(tenant="acme"))
    small = next(r for r in report.rows if r.tier == "small")
    assert (small.requests, small.routed_requests, small.cost_usd, small.reference_cost_usd) == (
        3, 2, "0.000164000", "0.007060000")  # 60,000 + 44,000 + 60,000; 3,500,000 * 2 + 60,000
    assert (small.routing_saved_usd, small.prefix_saved_usd) == ("0.006880000", "0.000016000")
    for r in report.rows:  # the levers add up to the counterfactual less the cost
        levers = (r.cache_saved_usd, r.routing_saved_usd, r.fallback_saved_usd, r.prefix_saved_usd, r.bulk_saved_usd,
                  r.cascade_saved_usd)
        assert Decimal(r.reference_cost_usd) - Decimal(r.cost_usd) == sum(map(Decimal, levers))
    [strict] = report.shadow
    assert (strict.policy, strict.requests, strict.agreed, strict.tiers, strict.live_tiers) == (
        "strict", 3, 1, {"large": 3}, {"large": 1, "small": 2})
    # strict: a and c at 3,500,000, b (400 cached) at 3,000,000; live: 60,000 + 44,000 + 3,500,000.
    assert (strict.cost_usd, strict.live_cost_usd, strict.unpriced) == ("0.010000000", "0.003604000", 0)


async def test_the_table_shows_levers_and_shadow_policies(ledger: Ledger) -> None:
    await record(ledger, routed("a"))
    await record(ledger, routed("c", tier="large"))
    table = render_table(await ledger.totals(UsageQuery()))
    blocks = table.split("\n\n")
    assert len(blocks) == 3
    assert blocks[0].splitlines()[2].split() == ["acme", "large", "1", "1000", "0", "100", "0.003500", "0.003500",
                                                 "0.0%"]
    assert blocks[1].splitlines()[4].split() == ["acme", "small", "0", "0.000000", "1", "0.003440", "0", "0.000000",
                                                 "0.000000", "0.000000", "0", "0.000000"]
    assert blocks[2].splitlines()[3].split() == ["strict", "2", "50.0%", "large", "100%", "large", "50%", "small",
                                                 "50%", "0.007000", "0.003560", "+96.6%"]


# --- bulk jobs: one charge per item, at the batch price, and the job's total ----------------------
def item(job: str, index: int, tenant: str = "acme", tier: str = "small", prompt: int = 1000,
         completion: int = 100) -> UsageEvent:
    """Item ``index`` of bulk job ``job``: its request id is the batch service's ``<job>-<index>``."""
    return usage(f"{job}-{index}", tenant=tenant, tier=tier, prompt=prompt, completion=completion).model_copy(
        update={"priority": Priority.BULK, "job_id": job, "counterfactual_tier": tier})


async def test_a_redelivered_item_is_charged_once_at_the_batch_price(ledger: Ledger) -> None:
    first = item("batch_a", 0)
    assert await record(ledger, first) is True
    # Redelivered (the worker re-ran it after a crash: other figures): the first charge stands.
    assert await record(ledger, item("batch_a", 0, completion=900)) is False
    [row] = await ledger.requests(["batch_a-0"])
    # small: 1000 * 0.05 + 100 * 0.10 $/M = 60,000 nano-dollars in full; batch_discount 0.5.
    assert (row.job_id, row.priority, row.cost_nanousd, row.reference_nanousd, row.bulk_saved_nanousd) == (
        "batch_a", "bulk", 30_000, 60_000, 30_000)
    [total] = (await ledger.totals(UsageQuery(job_id="batch_a"))).rows
    assert (total.requests, total.completion_tokens, total.cost_usd, total.bulk_saved_usd) == (
        1, 100, "0.000030000", "0.000030000")


async def test_a_jobs_totals_are_the_sum_of_its_items_and_nothing_else(ledger: Ledger) -> None:
    items = [item("batch_a", 0), item("batch_a", 1, prompt=2000, completion=50),
             item("batch_a", 2, tier="large", prompt=1000, completion=100)]
    for event in items:
        assert await record(ledger, event) is True
    assert await record(ledger, items[1]) is False  # a redelivery
    # Not the job's: an interactive request, another job's item, another tenant's request that
    # names the same job id (a tenant never sees another's usage, whatever id it asks for).
    await record(ledger, usage("alone", prompt=1000, completion=100))
    await record(ledger, item("batch_b", 0))
    await record(ledger, item("batch_a", 7, tenant="beta"))
    report = await ledger.totals(UsageQuery(tenant="acme", job_id="batch_a"))
    assert [(r.tenant, r.tier, r.requests, r.prompt_tokens, r.completion_tokens, r.cost_usd, r.reference_cost_usd,
             r.bulk_saved_usd) for r in report.rows] == [
        # large: 1000 * 2.50 + 100 * 10.00 $/M = 3,500,000 in full, half of it charged.
        ("acme", "large", 1, 1000, 100, "0.001750000", "0.003500000", "0.001750000"),
        # small: 60,000 and 2000 * 0.05 + 50 * 0.10 = 105,000 in full, half of each charged.
        ("acme", "small", 2, 3000, 150, "0.000082500", "0.000165000", "0.000082500")]
    rows = await ledger.requests([e.request_id for e in items])
    job_cost = sum(Decimal(r.cost_usd) for r in report.rows)
    assert job_cost * 10**9 == sum(r.cost_nanousd for r in rows) == sum(BOOK.price(e).cost_nanousd for e in items)
    # Every request of the tenant, the job's and the others, still adds up as before.
    everything = await ledger.totals(UsageQuery(tenant="acme"))
    assert sum(r.requests for r in everything.rows) == 5
    assert (await ledger.totals(UsageQuery(tenant="beta", job_id="batch_b"))).rows == []
    assert (await ledger.totals(UsageQuery(job_id="batch_none"))).rows == []


# --- the report command ---------------------------------------------------------------------
async def test_report_prints_the_totals_table(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
    engine = make_engine(url)
    ledger = Ledger(engine)
    await ledger.create_schema()
    await ledger.record(usage("r1", tenant="acme"),
                        Charge(250_000_000, 1_000_000_000, routing_saved_nanousd=750_000_000))
    await ledger.record(usage("r2", tenant="beta"), Charge(1, 1))
    await engine.dispose()
    table = await report(AccountingSettings(database_url=url), UsageQuery(tenant="acme"))
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["tenant", "tier", "requests"]
    assert lines[2].split() == ["acme", "small", "1", "100", "0", "10", "0.250000", "1.000000", "75.0%"]
    assert lines[7].split() == ["acme", "small", "0", "0.000000", "0", "0.750000", "0", "0.000000", "0.000000",
                                "0.000000", "0", "0.000000"]
    assert len(lines) == 8  # beta is filtered out; no shadow policy, no unsplit saving


async def test_rows_from_before_the_split_show_as_unsplit(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/ledger.db")
    ledger = Ledger(engine)
    await ledger.create_schema()
    await ledger.record(usage("old"), Charge(1_000, 5_000))  # as revision 0002 left them: no lever
    table = render_table(await ledger.totals(UsageQuery()))
    await engine.dispose()
    assert table.splitlines()[5].split()[-2:] == ["unsplit", "$"]
    assert table.splitlines()[7].split()[-1] == "0.000004"


def test_report_command_on_an_empty_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SF_DATABASE_URL", f"sqlite:///{tmp_path}/new/ledger.db")
    main(["report", "--since", "0"])
    assert capsys.readouterr().out == "no usage recorded yet\n"


async def test_report_command_for_one_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
    engine = make_engine(url)
    ledger = Ledger(engine)
    await ledger.create_schema()
    for event in (item("batch_a", 0), item("batch_a", 1), item("batch_b", 0), usage("alone")):
        await record(ledger, event)
    await engine.dispose()
    monkeypatch.setenv("SF_DATABASE_URL", url)
    await asyncio.to_thread(main, ["report", "--job", "batch_a"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["acme", "small", "2", "2000", "0", "200", "0.000060", "0.000120", "50.0%"]
    assert [line.split()[:2] for line in lines[2:4]] == [["acme", "small"], []]  # the job's one row only
