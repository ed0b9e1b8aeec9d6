"""The accounting service's handlers on FastStream's in-memory broker, with a SQLite ledger.

Accounting is FastStream end to end (a JetStream pull consumer with manual acks, and a
request/reply query), so its handlers run here without a nats-server: what they charge, what they
reject, and what they answer. How JetStream redelivers and shares the durable consumer between
replicas needs the real server: ``tests/integration/test_accounting.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from faststream.nats import TestNatsBroker

from contracts.subjects import USAGE_QUERY_SUBJECT, USAGE_STREAM, USAGE_SUBJECT, Priority
from contracts.v1 import UsageEvent, UsageQuery, UsageReport
from services.accounting.ledger import Ledger
from services.accounting.service import AccountingService
from services.accounting.settings import AccountingSettings
from tests.conftest import ROOT

pytestmark = pytest.mark.component


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[AccountingService]:
    settings = AccountingSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/ledger.db",
        pricebook_file=str(ROOT / "infra/config/pricebook.yaml"),
    )
    svc = AccountingService(settings)
    # start() minus the bus: the in-memory broker needs no stream or consumer.
    await svc.open_ledger()
    try:
        yield svc
    finally:
        await svc.close()


def usage(request_id: str, tenant: str = "acme", priority: Priority = Priority.INTERACTIVE,
          tier: str = "small") -> UsageEvent:
    return UsageEvent(request_id=request_id, tenant=tenant, model="smollm2-135m", tier=tier,
                      priority=priority, status="ok", prompt_tokens=1000, cached_prompt_tokens=400,
                      completion_tokens=100, occurred_at=1_700_000_000.0)


async def publish(broker: TestNatsBroker, body: bytes | UsageEvent) -> None:
    payload = body.model_dump_json().encode() if isinstance(body, UsageEvent) else body
    await broker.publish(payload, USAGE_SUBJECT, stream=USAGE_STREAM.name)


def ledger_of(service: AccountingService) -> Ledger:
    assert service.ledger is not None
    return service.ledger


async def test_an_event_is_charged_by_the_price_book(service: AccountingService) -> None:
    async with TestNatsBroker(service.broker) as broker:
        await publish(broker, usage("interactive-1"))
        await publish(broker, usage("bulk-1", priority=Priority.BULK))
    rows = {r.request_id: r for r in await ledger_of(service).requests(["interactive-1", "bulk-1"])}
    # small: 600 uncached * 0.05 + 400 cached * 0.01 + 100 out * 0.10 $/M = 44,000 nano-dollars,
    # bulk at half price; the reference tier ("large", uncached): 3,500,000 nano-dollars.
    assert (rows["interactive-1"].cost_nanousd, rows["interactive-1"].reference_nanousd) == (44_000, 3_500_000)
    assert rows["bulk-1"].cost_nanousd == 22_000
    assert (rows["bulk-1"].prompt_tokens, rows["bulk-1"].cached_prompt_tokens,
            rows["bulk-1"].completion_tokens) == (1000, 400, 100)


async def test_a_redelivered_event_is_charged_once(service: AccountingService) -> None:
    async with TestNatsBroker(service.broker) as broker:
        for _ in range(3):
            await publish(broker, usage("again"))
    report = await ledger_of(service).totals(UsageQuery(tenant="acme"))
    assert [(r.requests, r.cost_usd) for r in report.rows] == [(1, "0.000044000")]


async def test_poison_is_rejected_and_the_next_event_still_charged(service: AccountingService) -> None:
    async with TestNatsBroker(service.broker) as broker:
        await publish(broker, b"this is not JSON")
        await publish(broker, b'{"request_id": "half", "tenant": "acme"}')
        await publish(broker, usage("after-poison"))
    rows = await ledger_of(service).requests(["half", "after-poison"])
    assert [r.request_id for r in rows] == ["after-poison"]


async def test_an_unknown_tier_is_recorded_unpriced(service: AccountingService) -> None:
    async with TestNatsBroker(service.broker) as broker:
        await publish(broker, usage("odd", tier="experimental"))
    row = await ledger_of(service).get("odd")
    assert row is not None
    assert (row.priced, row.cost_nanousd) == (False, 0)


async def test_a_query_sees_only_the_tenant_asked_for(service: AccountingService) -> None:
    async with TestNatsBroker(service.broker) as broker:
        for i in range(2):
            await publish(broker, usage(f"acme-{i}"))
        await publish(broker, usage("beta-0", tenant="beta"))
        reply = await broker.request(UsageQuery(tenant="beta"), USAGE_QUERY_SUBJECT)
        report = UsageReport.model_validate_json(reply.body)
    assert [(r.tenant, r.tier, r.requests) for r in report.rows] == [("beta", "small", 1)]
