"""``python -m services.accounting``: run the accounting service.

``python -m services.accounting report [--tenant T] [--since UNIX] [--job BATCH_ID]`` prints the
usage totals straight from the ledger database (no bus needed), e.g. to check the savings after a
benchmark, or what one batch cost.

``python -m services.accounting migrate`` brings the ledger database to the newest schema
revision, as the service does at start-up; ``--sql [--from REV]`` prints that SQL instead, for a
DBA who applies it by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from sqlalchemy.engine import make_url

from contracts.v1 import UsageQuery
from services.accounting.ledger import Ledger, make_engine
from services.accounting.migrate import LedgerSchemaError, upgrade_ledger, write_upgrade_sql
from services.accounting.service import AccountingService
from services.accounting.settings import AccountingSettings
from services.shared.runner import configure_logging, run, settings_or_exit
from services.shared.usage_table import render_table


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.accounting",
                                     description="skinflint accounting (settings: SF_* variables)")
    commands = parser.add_subparsers(dest="command", metavar="{run,report,migrate}")
    commands.add_parser("run", help="run the service (the default)")
    report = commands.add_parser("report", help="print usage totals from the ledger database")
    report.add_argument("--tenant", help="only this tenant")
    report.add_argument("--since", type=float, metavar="UNIX", help="only requests at or after this time")
    report.add_argument("--job", metavar="BATCH_ID", help="only the items of this batch")
    migrate = commands.add_parser("migrate", help="bring the ledger database to the newest schema revision")
    migrate.add_argument("--sql", action="store_true",
                         help="print the SQL instead of running it (nothing is connected to)")
    migrate.add_argument("--from", dest="from_revision", metavar="REV",
                         help="with --sql: the revision the database is at (default: an empty database)")
    args = parser.parse_args(argv)
    if args.command == "migrate" and args.from_revision and not args.sql:
        parser.error("migrate: --from goes with --sql (a live database says its own revision)")
    return args


async def report(settings: AccountingSettings, query: UsageQuery) -> str:
    """The totals table for ``query``, read from the ledger at ``settings.database_url``."""
    engine = make_engine(settings.database_url)
    try:
        ledger = Ledger(engine)
        # A ledger nobody has written to yet reads as empty instead of failing on a missing table.
        await ledger.create_schema()
        return render_table(await ledger.totals(query))
    finally:
        await engine.dispose()


async def migrate(settings: AccountingSettings) -> str:
    """Bring the ledger at ``settings.database_url`` to the newest revision; say where it stands."""
    engine = make_engine(settings.database_url)
    try:
        revision = await upgrade_ledger(engine)
    finally:
        await engine.dispose()
    return f"ledger {make_url(settings.database_url).render_as_string()} is at schema revision {revision}\n"


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = settings_or_exit(AccountingSettings, "accounting")
    try:
        if args.command == "report":
            sys.stdout.write(asyncio.run(report(settings, UsageQuery(tenant=args.tenant, since=args.since,
                                                                    job_id=args.job))))
        elif args.command == "migrate" and args.sql:
            write_upgrade_sql(settings.database_url, sys.stdout, args.from_revision)
        elif args.command == "migrate":
            configure_logging("accounting", settings.log_level)  # Alembic's steps, on stderr
            sys.stdout.write(asyncio.run(migrate(settings)))
        else:
            run(lambda: AccountingService(settings), settings, "accounting")
    except LedgerSchemaError as exc:
        # What is wrong and what to do, without a traceback through Alembic.
        raise SystemExit(f"python -m services.accounting: {exc}") from exc


if __name__ == "__main__":
    main()
