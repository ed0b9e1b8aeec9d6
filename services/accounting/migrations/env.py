"""Alembic's environment for the ledger (loaded by Alembic, never imported).

Three ways in:
- the service and ``python -m services.accounting migrate`` (``services.accounting.migrate``) hand
  over a connection in ``config.attributes["connection"]``, inside their own locked transaction;
- offline (``--sql``) mode writes SQL for ``config.attributes["url"]`` without connecting;
- the ``alembic`` command line (``alembic.ini``, for developers) connects to ``sqlalchemy.url`` if
  the ini file sets one, else to ``SF_DATABASE_URL`` as the service reads it.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection
from sqlalchemy.types import TypeDecorator

from services.accounting.ledger import Base, make_engine

config = context.config


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Write a column of one of our TypeDecorators as the SQLAlchemy type it stores
    (``UtcDateTime`` becomes ``sa.DateTime(timezone=True)``): a migration then imports nothing from
    the models, and stays valid however they are renamed or moved later."""
    if type_ == "type" and isinstance(obj, TypeDecorator):
        impl = obj.impl_instance
        if type(impl).__module__.startswith("sqlalchemy."):
            return f"sa.{impl!r}"
    return False


OPTIONS: dict[str, Any] = {
    "target_metadata": Base.metadata,
    # SQLite alters a table only by copying it: batch mode writes ALTERs that way.
    "render_as_batch": True,
    "render_item": render_item,
    "compare_type": True,
}


def run_on(connection: Connection, **options: Any) -> None:
    context.configure(connection=connection, **OPTIONS, **options)
    # Inside the caller's transaction (the service's) this opens none; from the command line it is
    # Alembic's own.
    with context.begin_transaction():
        context.run_migrations()


def database_url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from services.accounting.settings import AccountingSettings

    return AccountingSettings().database_url


async def run_from_command_line() -> None:
    engine = make_engine(database_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_on)
            await connection.commit()  # a no-op where Alembic committed already
    finally:
        await engine.dispose()


def main() -> None:
    if config.config_file_name is not None:  # only the command line has an ini file
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    if context.is_offline_mode():
        context.configure(url=database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"},
                          **OPTIONS)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        # The caller's transaction holds every statement, on SQLite too (it began it explicitly).
        run_on(connection, transactional_ddl=True)
        return
    asyncio.run(run_from_command_line())


main()
