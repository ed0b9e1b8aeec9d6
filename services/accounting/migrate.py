"""The ledger's schema under Alembic: bring a database to the newest revision, or print the SQL.

The migration environment (``migrations/``: ``env.py``, ``versions/``) ships inside this package
and is configured here in code, so the service needs no ``alembic.ini`` and no particular working
directory. The ``alembic.ini`` at the top of the repository is only for developers writing a new
revision (``alembic revision --autogenerate``); see ``infra/README.md``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)
# Alembic announces each of its plugins at INFO on every command: at every start-up of every
# replica, a dozen lines that say nothing. Unless somebody chose a level for it, keep it quiet.
_plugins_log = logging.getLogger("alembic.runtime.plugins")
if _plugins_log.level == logging.NOTSET:
    _plugins_log.setLevel(logging.WARNING)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

#: The revision that creates the schema ``Base.metadata.create_all`` made before migrations
#: existed; a database holding that schema but no ``alembic_version`` is stamped with it.
BASELINE_REVISION = "0001"
LEDGER_TABLE = "usage_records"
#: The columns of ``usage_records`` at the baseline, frozen: adoption checks them so that a table
#: of the same name but another shape is never stamped as ours.
BASELINE_COLUMNS = frozenset({
    "request_id", "tenant", "api_key_id", "model", "tier", "priority", "status", "prompt_tokens",
    "cached_prompt_tokens", "completion_tokens", "queue_seconds", "engine_seconds", "worker",
    "cache_outcome", "occurred_at", "recorded_at", "cost_nanousd", "reference_nanousd", "priced",
})

#: Key of the PostgreSQL advisory lock migrations take: "SFLEDGER" in ASCII, a positive BIGINT.
PG_LOCK_KEY = int.from_bytes(b"SFLEDGER", "big")


class LedgerSchemaError(RuntimeError):
    """The ledger database cannot be brought to this code's schema (a revision this code does not
    know, or a table it did not create). Starting anyway would read or write the wrong columns."""


def alembic_config(*, connection: Connection | None = None, url: str | None = None,
                   output: TextIO | None = None) -> Config:
    """An Alembic configuration for the ledger's migrations, built in code.

    ``connection``: run on this (synchronous, see ``AsyncConnection.run_sync``) connection, inside
    the caller's transaction. ``url``: the database offline (``--sql``) mode writes SQL for.
    ``output``: where offline SQL goes (standard output by default).
    """
    config = Config(output_buffer=output, stdout=output or sys.stdout)
    # Option values go through ConfigParser interpolation: a '%' in the path must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    config.attributes["url"] = url
    return config


async def upgrade_ledger(engine: AsyncEngine) -> str:
    """Bring the ledger at ``engine`` to the newest revision and return that revision.

    Idempotent, and safe when several replicas call it at once: the whole check-and-upgrade runs
    in one transaction that first takes the database's migration lock (see ``_take_lock``), so
    the others wait and then find the work done. A database created before migrations existed
    (``usage_records`` but no ``alembic_version``) is stamped with the baseline revision and then
    upgraded; its rows are untouched. A failed migration rolls back entirely (both databases run
    DDL in transactions).

    Raises ``LedgerSchemaError`` for a database at a revision this code does not know (migrated by
    a newer skinflint) or holding a ``usage_records`` table it cannot adopt.

    Alembic keeps its migration context in module globals: calls for *different* databases must
    not overlap within one process (calls for the same one wait for each other's lock first).
    """
    async with engine.begin() as conn:
        await _take_lock(conn)
        revision: str = await conn.run_sync(_upgrade)
    return revision


async def _take_lock(conn: AsyncConnection) -> None:
    if conn.dialect.name == "postgresql":
        # Transactional DDL alone would not do: two replicas on an empty database would both see
        # no table, and the second's CREATE TABLE would fail once the first commits. The advisory
        # lock serialises them; it is released at commit or rollback, and by the server when a
        # replica dies holding it.
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
    else:
        # SQLite: take the write lock for the whole transaction (waiting up to busy_timeout for
        # another process), which serialises replicas on one file the same way. Beginning the
        # transaction by hand also puts the DDL inside it: Python's sqlite3 begins one only before
        # INSERT/UPDATE/DELETE, so CREATE and ALTER would otherwise commit one by one.
        await conn.exec_driver_sql("BEGIN IMMEDIATE")


def _upgrade(connection: Connection) -> str:
    config = alembic_config(connection=connection)
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    assert head is not None, f"no migrations in {MIGRATIONS_DIR}"
    # transactional_ddl: so that its log says what is true (the caller's transaction holds all).
    current = MigrationContext.configure(connection, opts={"transactional_ddl": True}).get_current_revision()
    known = {rev.revision for rev in script.walk_revisions()}
    if current is not None and current not in known:
        raise LedgerSchemaError(
            f"the ledger database is at schema revision {current!r}, which this version of skinflint "
            f"does not know (its newest is {head!r}): it was migrated by a newer version. Run that "
            "version, or restore a backup taken before the upgrade; a downgrade needs the newer code.")
    if current is None and inspect(connection).has_table(LEDGER_TABLE):
        _check_adoptable(connection)
        log.info("ledger: adopting a %s table created before migrations as revision %s",
                 LEDGER_TABLE, BASELINE_REVISION)
        command.stamp(config, BASELINE_REVISION)
        current = BASELINE_REVISION
    if current != head:
        command.upgrade(config, "head")
        log.info("ledger: schema upgraded from revision %s to %s", current or "<none>", head)
    return head


def _check_adoptable(connection: Connection) -> None:
    columns = {col["name"] for col in inspect(connection).get_columns(LEDGER_TABLE)}
    if columns != BASELINE_COLUMNS:
        missing = ", ".join(sorted(BASELINE_COLUMNS - columns)) or "none"
        extra = ", ".join(sorted(columns - BASELINE_COLUMNS)) or "none"
        raise LedgerSchemaError(
            f"table {LEDGER_TABLE!r} exists without an alembic_version table, but its columns are not "
            f"those of revision {BASELINE_REVISION} (missing: {missing}; unexpected: {extra}): not "
            "adopting it. Point SF_DATABASE_URL at another database or schema, or move the table away.")


def write_upgrade_sql(url: str, output: TextIO, from_revision: str | None = None) -> None:
    """Write to ``output`` the SQL that upgrades a ledger at ``url``'s kind of database (nothing
    is connected to) from ``from_revision`` (default: an empty database) to the newest revision,
    for a DBA who applies migrations by hand.
    """
    target = f"{from_revision}:head" if from_revision else "head"
    command.upgrade(alembic_config(url=url, output=output), target, sql=True)
