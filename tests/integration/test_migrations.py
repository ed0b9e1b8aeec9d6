"""The ledger's schema under Alembic, on SQLite and on PostgreSQL (each test in its own schema).

What must hold: an empty database is brought to the newest revision; a database made by the
code before migrations (``create_all``, no ``alembic_version``) is adopted with its rows; the
migrations build exactly what the models declare; replicas starting at once migrate once; a
database from a newer version stops the service with a message that says so.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Float,
    Index,
    MetaData,
    String,
    Table,
    inspect,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.accounting import migrate
from services.accounting.__main__ import main
from services.accounting.ledger import Ledger, make_engine
from services.accounting.migrate import LedgerSchemaError, alembic_config, upgrade_ledger
from services.accounting.pricing import Charge
from tests.conftest import ROOT
from tests.integration.test_ledger import PG_URL, drop_schema, pg_answers, usage

pytestmark = pytest.mark.integration

def newest_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


HEAD = newest_revision()

EngineFactory = Callable[[], AsyncEngine]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def new_engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EngineFactory]:
    """Makes engines on one empty database: a SQLite file, or a fresh PostgreSQL schema (dropped
    afterwards, so the shared ``test`` database is left as it was)."""
    engines: list[AsyncEngine] = []
    schema = None
    if request.param == "sqlite":
        def make() -> AsyncEngine:
            engines.append(make_engine(f"sqlite+aiosqlite:///{tmp_path}/ledger.db"))
            return engines[-1]
    else:
        if not pg_answers():
            pytest.skip(f"no PostgreSQL answers at {PG_URL}")
        schema = f"sf_migrations_{uuid.uuid4().hex[:12]}"
        admin = create_async_engine(PG_URL)
        async with admin.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        await admin.dispose()

        def make() -> AsyncEngine:
            search_path = {"server_settings": {"search_path": schema}}
            engines.append(create_async_engine(PG_URL, connect_args=search_path))
            return engines[-1]
    try:
        yield make
    finally:
        for engine in engines:
            await engine.dispose()
        if schema is not None:
            await drop_schema(PG_URL, schema)


def todays_metadata() -> MetaData:
    """``usage_records`` as the models declared it before migrations existed (a frozen copy: the
    models will change, what old databases hold will not)."""
    metadata = MetaData()
    Table(
        "usage_records", metadata,
        Column("request_id", String, primary_key=True),
        *(Column(name, String, nullable=False)
          for name in ("tenant", "api_key_id", "model", "tier", "priority", "status")),
        *(Column(name, BigInteger, nullable=False)
          for name in ("prompt_tokens", "cached_prompt_tokens", "completion_tokens")),
        Column("queue_seconds", Float, nullable=False),
        Column("engine_seconds", Float, nullable=False),
        Column("worker", String, nullable=False),
        Column("cache_outcome", String, nullable=False),
        Column("occurred_at", DateTime(timezone=True), nullable=False, index=True),
        Column("recorded_at", DateTime(timezone=True), nullable=False),
        Column("cost_nanousd", BigInteger, nullable=False),
        Column("reference_nanousd", BigInteger, nullable=False),
        Column("priced", Boolean, nullable=False),
        Index("ix_usage_records_tenant_occurred", "tenant", "occurred_at"),
    )
    return metadata


OLD_ROW = {
    "request_id": "before-migrations", "tenant": "acme", "api_key_id": "k1", "model": "m", "tier": "small",
    "priority": "interactive", "status": "ok", "prompt_tokens": 100, "cached_prompt_tokens": 40,
    "completion_tokens": 10, "queue_seconds": 0.5, "engine_seconds": 1.5, "worker": "w1",
    "cache_outcome": "miss", "occurred_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    "recorded_at": datetime(2025, 1, 2, 3, 4, 6, tzinfo=UTC), "cost_nanousd": 1_000,
    "reference_nanousd": 5_000, "priced": True,
}


async def revision_of(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars())


def check_models_match(connection: Connection) -> None:
    """``alembic check``: raises AutogenerateDiffsDetected, listing the differences, if any."""
    command.check(alembic_config(connection=connection))


async def test_an_empty_database_is_brought_to_head(new_engine: EngineFactory) -> None:
    engine = new_engine()
    assert await upgrade_ledger(engine) == HEAD
    assert await upgrade_ledger(engine) == HEAD  # idempotent: every start-up calls it
    assert await revision_of(engine) == [HEAD]
    ledger = Ledger(engine)
    assert await ledger.record(usage("r1"), Charge(1, 2)) is True
    assert [r.request_id for r in await ledger.requests(["r1"])] == ["r1"]


async def test_migrations_build_what_the_models_declare(new_engine: EngineFactory) -> None:
    engine = new_engine()
    await upgrade_ledger(engine)
    async with engine.connect() as conn:
        await conn.run_sync(check_models_match)
        indexes = await conn.run_sync(lambda c: {ix["name"]: ix["column_names"]
                                                 for ix in inspect(c).get_indexes("usage_records")})
    assert indexes == {"ix_usage_records_occurred_at": ["occurred_at"],
                       "ix_usage_records_tenant_occurred": ["tenant", "occurred_at"],
                       "ix_usage_records_job_id": ["job_id"]}


async def test_a_ledger_made_before_migrations_is_adopted_with_its_rows(new_engine: EngineFactory) -> None:
    engine = new_engine()
    old = todays_metadata()
    async with engine.begin() as conn:
        await conn.run_sync(old.create_all)
        await conn.execute(old.tables["usage_records"].insert().values(**OLD_ROW))
    assert await upgrade_ledger(engine) == HEAD
    assert await revision_of(engine) == [HEAD]
    row = await Ledger(engine).get("before-migrations")
    assert row is not None
    assert {name: getattr(row, name) for name in OLD_ROW} == OLD_ROW
    async with engine.connect() as conn:
        await conn.run_sync(check_models_match)  # what it held was revision 0001 indeed


async def migrate_to(engine: AsyncEngine, revision: str, down: bool = False) -> None:
    """Run Alembic up (or down) to ``revision`` on ``engine``, as a developer would."""
    move = command.downgrade if down else command.upgrade
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: move(alembic_config(connection=c), revision))


async def usage_columns(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: {col["name"] for col in inspect(c).get_columns("usage_records")})


async def test_revision_0005_adds_the_job_to_a_ledger_with_rows_and_comes_off_again(
        new_engine: EngineFactory) -> None:
    engine = new_engine()
    await migrate_to(engine, "0004")
    async with engine.begin() as conn:
        await conn.execute(todays_metadata().tables["usage_records"].insert().values(**OLD_ROW))
    assert "job_id" not in await usage_columns(engine)
    assert await upgrade_ledger(engine) == HEAD
    ledger = Ledger(engine)
    old = await ledger.get("before-migrations")
    assert old is not None and old.job_id is None  # a request on its own
    await ledger.record(usage("item-0").model_copy(update={"job_id": "batch_1"}), Charge(3, 6))
    item = await ledger.get("item-0")
    assert item is not None and item.job_id == "batch_1"
    await migrate_to(engine, "0004", down=True)
    assert "job_id" not in await usage_columns(engine)
    assert await revision_of(engine) == ["0004"]


async def test_replicas_starting_at_once_migrate_once(new_engine: EngineFactory) -> None:
    engines = [new_engine() for _ in range(4)]
    assert await asyncio.gather(*(upgrade_ledger(e) for e in engines)) == [HEAD] * 4
    assert await revision_of(engines[0]) == [HEAD]


async def test_a_failed_migration_leaves_the_database_as_it_was(new_engine: EngineFactory,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    class FailsAfterUpgrading:
        """Alembic's commands, but the upgrade fails after running every statement."""

        stamp = staticmethod(command.stamp)

        @staticmethod
        def upgrade(config: Config, revision: str) -> None:
            command.upgrade(config, revision)
            raise RuntimeError("the last statement failed")

    monkeypatch.setattr(migrate, "command", FailsAfterUpgrading)
    engine = new_engine()
    with pytest.raises(RuntimeError, match="the last statement failed"):
        await upgrade_ledger(engine)
    async with engine.connect() as conn:
        assert await conn.run_sync(lambda c: inspect(c).get_table_names()) == []


async def set_revision(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = :rev"), {"rev": revision})


async def test_a_newer_revision_is_refused_untouched(new_engine: EngineFactory) -> None:
    engine = new_engine()
    await upgrade_ledger(engine)
    await Ledger(engine).record(usage("r1"), Charge(1, 1))
    await set_revision(engine, "9999_from_the_future")
    with pytest.raises(LedgerSchemaError, match=r"revision '9999_from_the_future'.*newer version"):
        await upgrade_ledger(engine)
    assert await revision_of(engine) == ["9999_from_the_future"]
    assert await Ledger(engine).get("r1") is not None


async def test_a_foreign_usage_records_table_is_not_adopted(new_engine: EngineFactory) -> None:
    engine = new_engine()
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE usage_records (request_id VARCHAR PRIMARY KEY, amount FLOAT)"))
    with pytest.raises(LedgerSchemaError, match=r"missing: api_key_id, .*unexpected: amount"):
        await upgrade_ledger(engine)
    async with engine.connect() as conn:
        assert not await conn.run_sync(lambda c: inspect(c).has_table("alembic_version"))


# --- the migrate command, and the service at start-up --------------------------------------------
async def test_migrate_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/db/ledger.db"
    monkeypatch.setenv("SF_DATABASE_URL", url)
    await asyncio.to_thread(main, ["migrate"])
    await asyncio.to_thread(main, ["migrate"])
    assert capsys.readouterr().out == f"ledger {url} is at schema revision {HEAD}\n" * 2
    engine = make_engine(url)
    try:
        assert await revision_of(engine) == [HEAD]
    finally:
        await engine.dispose()


def test_migrate_sql_prints_the_schema_without_connecting(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing listens there: --sql must not try.
    monkeypatch.setenv("SF_DATABASE_URL", "postgresql://sf@127.0.0.1:1/ledger")
    main(["migrate", "--sql"])
    sql = capsys.readouterr().out
    for statement in ("CREATE TABLE alembic_version", "CREATE TABLE usage_records",
                      "occurred_at TIMESTAMP WITH TIME ZONE NOT NULL",
                      "CREATE INDEX ix_usage_records_occurred_at ON usage_records (occurred_at)",
                      "CREATE INDEX ix_usage_records_tenant_occurred ON usage_records (tenant, occurred_at)",
                      "INSERT INTO alembic_version (version_num) VALUES ('0001')",
                      "ALTER TABLE usage_records ADD COLUMN cache_saved_nanousd BIGINT DEFAULT '0' NOT NULL",
                      "ALTER TABLE usage_records ADD COLUMN routing_saved_nanousd BIGINT DEFAULT '0' NOT NULL",
                      "CREATE TABLE usage_route_shadow",
                      "ALTER TABLE usage_records ADD COLUMN job_id VARCHAR",
                      "CREATE INDEX ix_usage_records_job_id ON usage_records (job_id)",
                      f"UPDATE alembic_version SET version_num='{HEAD}'", "COMMIT;"):
        assert statement in sql
    with pytest.raises(SystemExit):
        main(["migrate", "--from", HEAD])  # --from without --sql is refused


async def run_service(url: str) -> subprocess.CompletedProcess[str]:
    """``python -m services.accounting`` until it exits (no bus answers: it must stop before)."""
    env = {**os.environ, "SF_DATABASE_URL": url, "SF_NATS_URL": "nats://127.0.0.1:1"}
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "services.accounting"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60)


async def test_the_service_stops_on_a_newer_revision(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
    engine = make_engine(url)
    try:
        await upgrade_ledger(engine)
        await set_revision(engine, "9999")
    finally:
        await engine.dispose()
    done = await run_service(url)
    assert done.returncode == 1
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("python -m services.accounting: the ledger database is at schema revision '9999'")
    assert "Traceback" not in done.stderr
