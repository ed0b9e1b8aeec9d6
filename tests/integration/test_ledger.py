"""The ledger on a real database: SQLite in a temporary folder, and PostgreSQL when one answers.

These touch a database, so they carry the ``integration`` marker (its definition covers SQL)
even though they need no bus and run in milliseconds.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts.subjects import Priority
from contracts.v1 import UsageEvent, UsageQuery
from services.accounting.__main__ import main, report
from services.accounting.ledger import Ledger, UnstorableUsage, make_engine
from services.accounting.pricing import UNPRICED, Charge
from services.accounting.settings import AccountingSettings

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
    first = Charge(cost_nanousd=1_000, reference_nanousd=5_000)
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


# --- the report command ---------------------------------------------------------------------
async def test_report_prints_the_totals_table(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
    engine = make_engine(url)
    ledger = Ledger(engine)
    await ledger.create_schema()
    await ledger.record(usage("r1", tenant="acme"), Charge(250_000_000, 1_000_000_000))
    await ledger.record(usage("r2", tenant="beta"), Charge(1, 1))
    await engine.dispose()
    table = await report(AccountingSettings(database_url=url), UsageQuery(tenant="acme"))
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["tenant", "tier", "requests"]
    assert lines[2].split() == ["acme", "small", "1", "100", "0", "10", "0.250000", "1.000000", "75.0%",
                                "0", "0.000000"]
    assert len(lines) == 3  # beta is filtered out


def test_report_command_on_an_empty_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SF_DATABASE_URL", f"sqlite:///{tmp_path}/new/ledger.db")
    main(["report", "--since", "0"])
    assert capsys.readouterr().out == "no usage recorded yet\n"
