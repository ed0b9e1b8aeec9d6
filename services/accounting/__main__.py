"""``python -m services.accounting``: run the accounting service.

``python -m services.accounting report [--tenant T] [--since UNIX]`` prints the usage totals
straight from the ledger database (no bus needed), e.g. to check the savings after a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from contracts.v1 import UsageQuery
from services.accounting.ledger import Ledger, make_engine
from services.accounting.service import AccountingService
from services.accounting.settings import AccountingSettings
from services.shared.runner import run
from services.shared.usage_table import render_table


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.accounting",
                                     description="skinflint accounting (settings: SF_* variables)")
    commands = parser.add_subparsers(dest="command", metavar="{run,report}")
    commands.add_parser("run", help="run the service (the default)")
    report = commands.add_parser("report", help="print usage totals from the ledger database")
    report.add_argument("--tenant", help="only this tenant")
    report.add_argument("--since", type=float, metavar="UNIX", help="only requests at or after this time")
    return parser.parse_args(argv)


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


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = AccountingSettings()
    if args.command == "report":
        sys.stdout.write(asyncio.run(report(settings, UsageQuery(tenant=args.tenant, since=args.since))))
        return
    run(lambda: AccountingService(settings), settings, "accounting")


if __name__ == "__main__":
    main()
