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
from prometheus_client import REGISTRY

from contracts.subjects import USAGE_QUERY_SUBJECT, USAGE_STREAM, USAGE_SUBJECT, Priority
from contracts.v1 import ShadowPick, UsageEvent, UsageQuery, UsageReport
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
    """A request for a named model (no routing): its counterfactual tier is its own."""
    return UsageEvent(request_id=request_id, tenant=tenant, model="smollm2-135m", tier=tier,
                      priority=priority, status="ok", prompt_tokens=1000, cached_prompt_tokens=400,
                      completion_tokens=100, counterfactual_tier=tier, occurred_at=1_700_000_000.0)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


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
    # bulk at half price; a named model's counterfactual is its own tier, uncached: 60,000.
    assert (rows["interactive-1"].cost_nanousd, rows["interactive-1"].reference_nanousd) == (44_000, 60_000)
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


async def test_routing_and_its_levers_are_charged_and_counted(service: AccountingService) -> None:
    cheaper = usage("auto-small").model_copy(update={
        "model": "auto", "counterfactual_tier": "large", "route_policy": "learned", "route_score": 0.1,
        "route_threshold": 0.5, "route_shadow": [ShadowPick(policy="strict", tier="large")]})
    dearer = usage("auto-large", tier="large").model_copy(update={
        "model": "auto", "counterfactual_tier": "small", "route_policy": "rule:long-context"})
    fell = usage("fell-back").model_copy(update={"counterfactual_tier": "large", "fallback_from": "large"})
    before = {name: sample(name, tenant="metrics-t", tier=tier) for name, tier in (
        ("skinflint_routing_saved_usd_total", "small"), ("skinflint_routing_extra_cost_usd_total", "large"))}
    async with TestNatsBroker(service.broker) as broker:
        for event in (cheaper, dearer, fell):
            await publish(broker, event.model_copy(update={"tenant": "metrics-t"}))
        reply = await broker.request(UsageQuery(tenant="metrics-t"), USAGE_QUERY_SUBJECT)
    report = UsageReport.model_validate_json(reply.body)
    by_tier = {r.tier: r for r in report.rows}
    # small, full price 60,000; large, full 3,500,000: routing saved 3,440,000 on the cheaper pick
    # and lost as much on the dearer one; the fallback's difference is not routing's.
    assert (by_tier["small"].routed_requests, by_tier["small"].routing_saved_usd) == (1, "0.003440000")
    assert (by_tier["small"].fallbacks, by_tier["small"].fallback_saved_usd) == (1, "0.003440000")
    assert (by_tier["large"].routed_requests, by_tier["large"].routing_saved_usd) == (1, "-0.003440000")
    assert by_tier["small"].prefix_saved_usd == "0.000032000"  # 16,000 on each of the two small requests
    assert [(s.policy, s.requests, s.agreed) for s in report.shadow] == [("strict", 1, 0)]
    assert sample("skinflint_routing_saved_usd_total", tenant="metrics-t", tier="small") - before[
        "skinflint_routing_saved_usd_total"] == pytest.approx(0.00344)
    assert sample("skinflint_routing_extra_cost_usd_total", tenant="metrics-t", tier="large") - before[
        "skinflint_routing_extra_cost_usd_total"] == pytest.approx(0.00344)
