"""Accounting against a real nats-server (JetStream) and a SQLite ledger in a temporary folder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from sqlalchemy.exc import OperationalError

from contracts.subjects import ACCOUNTING_DURABLE, USAGE_QUERY_SUBJECT, USAGE_STREAM, USAGE_SUBJECT, Priority
from contracts.v1 import ShadowPick, UsageEvent, UsageQuery, UsageReport
from services.accounting.ledger import Ledger
from services.accounting.service import AccountingService
from services.accounting.settings import AccountingSettings
from tests.conftest import ROOT
from tests.support.natsd import NatsServer

pytestmark = pytest.mark.integration


def settings_for(server: NatsServer, tmp_path: Path, **overrides: Any) -> AccountingSettings:
    return AccountingSettings(
        nats_url=server.url,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/var/ledger.db",
        pricebook_file=str(ROOT / "infra/config/pricebook.yaml"),
        fetch_timeout_s=0.5,
        retry_backoff_s=0.05,
        drain_timeout_s=5.0,
        **overrides,
    )


@asynccontextmanager
async def running(settings: AccountingSettings) -> AsyncIterator[AccountingService]:
    service = AccountingService(settings)
    try:
        await service.start()
        yield service
        await service.drain()
    finally:
        await service.close()


@pytest.fixture
async def nc(fresh_nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    client = await nats.connect(fresh_nats_server.url)
    yield client
    await client.drain()


@pytest.fixture
async def accounting(fresh_nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[AccountingService]:
    async with running(settings_for(fresh_nats_server, tmp_path)) as service:
        yield service


def usage(request_id: str, tier: str = "small", tenant: str = "acme") -> UsageEvent:
    """A bulk 'auto' request the learned policy sent to ``tier``; without routing: 'large'."""
    return UsageEvent(request_id=request_id, tenant=tenant, model="auto", tier=tier,
                      priority=Priority.BULK, status="ok", prompt_tokens=1000, cached_prompt_tokens=400,
                      completion_tokens=100, counterfactual_tier="large", route_policy="learned", route_score=0.1,
                      route_threshold=0.5, route_shadow=[ShadowPick(policy="strict", tier="large")],
                      occurred_at=1_700_000_000.0)


async def publish(js: JetStreamContext, body: bytes, msg_id: str | None = None) -> tuple[int, bool]:
    """Publish to the usage stream; the stream sequence and whether JetStream saw a duplicate."""
    headers = {"Nats-Msg-Id": msg_id} if msg_id else None
    ack = await js.publish(USAGE_SUBJECT, body, stream=USAGE_STREAM.name, headers=headers)
    return ack.seq, bool(ack.duplicate)


async def consumed(js: JetStreamContext, seq: int, within_s: float = 20.0) -> ConsumerInfo:
    """Wait until the durable consumer has settled (acked or terminated) everything up to ``seq``.

    The ack floor only moves past a message once it is settled, so a message left pending
    (neither acked nor rejected) would keep it below ``seq`` and fail this wait.
    """
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        info = await js.consumer_info(USAGE_STREAM.name, ACCOUNTING_DURABLE)
        if info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= seq:
            return info
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the consumer did not settle up to {seq}: {info}")
        await asyncio.sleep(0.05)


def ledger_of(service: AccountingService) -> Ledger:
    assert service.ledger is not None
    return service.ledger


async def test_a_request_is_charged_once(accounting: AccountingService, nc: NatsClient) -> None:
    js = nc.jetstream()
    body = usage("req-1").model_dump_json().encode()
    _, dup = await publish(js, body, msg_id="usage-req-1")
    assert not dup
    _, dup = await publish(js, body, msg_id="usage-req-1")
    assert dup, "JetStream drops a second publish with the same Nats-Msg-Id"
    # Past the dedup window (or from a producer without the header) the stream keeps a copy:
    # the ledger must absorb it.
    last, dup = await publish(js, body)
    assert not dup
    await consumed(js, last)
    rows = await ledger_of(accounting).requests(["req-1"])
    assert len(rows) == 1
    # bulk on "small": (600 * 0.05 + 400 * 0.01 + 100 * 0.10) * 0.5 $/M = 22,000 nano-dollars;
    # the counterfactual "large", uncached: 1000 * 2.50 + 100 * 10.00 $/M = 3,500,000 nano-dollars.
    assert (rows[0].cost_nanousd, rows[0].reference_nanousd, rows[0].priced) == (22_000, 3_500_000, True)
    # Split in order: routing (small at full price: 60,000), prefix cache (44,000), bulk (22,000).
    assert (rows[0].routing_saved_nanousd, rows[0].prefix_saved_nanousd, rows[0].bulk_saved_nanousd) == (
        3_440_000, 16_000, 22_000)


async def test_malformed_messages_do_not_block_good_ones(accounting: AccountingService,
                                                         nc: NatsClient) -> None:
    js = nc.jetstream()
    await publish(js, b"this is not JSON")
    await publish(js, b'{"request_id": "half", "tenant": "acme"}')
    last, _ = await publish(js, usage("after-poison").model_dump_json().encode())
    # The ack wait is 30 s: the floor passes the poison within the deadline only if it was rejected.
    info = await consumed(js, last)
    # Each message was delivered once: the poison was settled at once, not left to time out.
    assert info.delivered is not None
    assert info.delivered.consumer_seq == info.delivered.stream_seq == last
    assert [r.request_id for r in await ledger_of(accounting).requests(["half", "after-poison"])] == [
        "after-poison"]


async def test_an_unknown_tier_is_recorded_unpriced(accounting: AccountingService, nc: NatsClient) -> None:
    js = nc.jetstream()
    last, _ = await publish(js, usage("odd-tier", tier="experimental").model_dump_json().encode())
    await consumed(js, last)
    row = await ledger_of(accounting).get("odd-tier")
    assert row is not None
    assert (row.priced, row.cost_nanousd, row.reference_nanousd) == (False, 0, 0)


async def test_a_failed_write_is_retried(accounting: AccountingService, nc: NatsClient,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = ledger_of(accounting)
    real_record = ledger.record
    attempts: list[str] = []

    async def flaky_record(event: UsageEvent, charge: Any) -> bool:
        attempts.append(event.request_id)
        if len(attempts) == 1:
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return await real_record(event, charge)

    monkeypatch.setattr(ledger, "record", flaky_record)
    js = nc.jetstream()
    last, _ = await publish(js, usage("flaky").model_dump_json().encode())
    info = await consumed(js, last)
    assert attempts == ["flaky", "flaky"]
    assert info.delivered is not None
    assert info.delivered.consumer_seq == 2  # the nack made JetStream deliver it again
    assert await ledger.get("flaky") is not None


async def test_usage_query_returns_the_report(accounting: AccountingService, nc: NatsClient) -> None:
    js = nc.jetstream()
    for i in range(3):
        last, _ = await publish(js, usage(f"q-{i}").model_dump_json().encode())
    await publish(js, usage("other", tenant="beta").model_dump_json().encode())
    last, _ = await publish(js, usage("other-2", tenant="beta").model_dump_json().encode())
    await consumed(js, last)
    reply = await nc.request(USAGE_QUERY_SUBJECT, UsageQuery(tenant="acme").model_dump_json().encode(),
                             timeout=5)
    report = UsageReport.model_validate_json(reply.data)
    assert [(r.tenant, r.tier, r.requests, r.cost_usd, r.reference_cost_usd) for r in report.rows] == [
        ("acme", "small", 3, "0.000066000", "0.010500000")]
    assert [(r.routed_requests, r.routing_saved_usd, r.prefix_saved_usd, r.bulk_saved_usd) for r in report.rows] == [
        (3, "0.010320000", "0.000048000", "0.000066000")]
    # The candidate 'strict' sent all three to large: 600 * 2.50 + 400 * 1.25 + 100 * 10, halved, each.
    assert [(s.policy, s.requests, s.agreed, s.tiers, s.cost_usd, s.live_cost_usd) for s in report.shadow] == [
        ("strict", 3, 0, {"large": 3}, "0.004500000", "0.000066000")]


async def test_replicas_share_the_durable_consumer(fresh_nats_server: NatsServer, tmp_path: Path,
                                                   nc: NatsClient) -> None:
    settings = settings_for(fresh_nats_server, tmp_path, consumer_batch_size=4)
    js = nc.jetstream()
    async with running(settings) as one, running(settings.model_copy(update={"instance_id": "two"})):
        for i in range(40):
            last, _ = await publish(js, usage(f"rep-{i}").model_dump_json().encode())
        info = await consumed(js, last)
        assert info.config.durable_name == ACCOUNTING_DURABLE
        streams = await js.streams_info()
        assert [s.state.consumer_count for s in streams if s.config.name == USAGE_STREAM.name] == [1]
        report = await ledger_of(one).totals(UsageQuery())
        assert [(r.requests, r.cost_usd) for r in report.rows] == [(40, "0.000880000")]


async def test_consumer_follows_the_settings_of_the_latest_start(fresh_nats_server: NatsServer,
                                                               tmp_path: Path, nc: NatsClient) -> None:
    js = nc.jetstream()
    async with running(settings_for(fresh_nats_server, tmp_path, ack_wait_s=30.0)):
        assert (await js.consumer_info(USAGE_STREAM.name, ACCOUNTING_DURABLE)).config.ack_wait == 30.0
    async with running(settings_for(fresh_nats_server, tmp_path, ack_wait_s=45.0, max_deliveries=9)):
        config = (await js.consumer_info(USAGE_STREAM.name, ACCOUNTING_DURABLE)).config
        assert (config.ack_wait, config.max_deliver) == (45.0, 9)


async def test_a_jobs_items_are_charged_once_each_and_its_query_gives_its_totals(
        accounting: AccountingService, nc: NatsClient) -> None:
    js = nc.jetstream()
    items = [usage(f"batch_x-{i}").model_copy(update={"job_id": "batch_x"}) for i in range(3)]
    for event in items:
        await publish(js, event.model_dump_json().encode(), msg_id=f"usage-{event.request_id}")
    # Item 1 again, past JetStream's dedup (another id): redelivered to accounting, charged once.
    await publish(js, items[1].model_dump_json().encode(), msg_id="usage-batch_x-1-again")
    await publish(js, usage("alone").model_dump_json().encode())
    last, _ = await publish(js, usage("b-0", tenant="beta").model_copy(update={"job_id": "batch_x"})
                            .model_dump_json().encode())
    await consumed(js, last)
    rows = await ledger_of(accounting).requests([e.request_id for e in items])
    # Each at the batch price: 44,000 nano-dollars in full on small (400 cached), 22,000 charged.
    assert sorted((r.request_id, r.job_id, r.cost_nanousd, r.bulk_saved_nanousd) for r in rows) == [
        (e.request_id, "batch_x", 22_000, 22_000) for e in items]

    async def query(q: UsageQuery) -> UsageReport:
        reply = await nc.request(USAGE_QUERY_SUBJECT, q.model_dump_json().encode(), timeout=5)
        return UsageReport.model_validate_json(reply.data)

    job = await query(UsageQuery(tenant="acme", job_id="batch_x"))
    assert [(r.tenant, r.requests, r.completion_tokens, r.cost_usd, r.bulk_saved_usd) for r in job.rows] == [
        ("acme", 3, 300, "0.000066000", "0.000066000")]  # 3 x 22,000: the sum of its items
    assert [(s.policy, s.requests) for s in job.shadow] == [("strict", 3)]
    assert [r.requests for r in (await query(UsageQuery(tenant="acme"))).rows] == [4]
    assert [r.requests for r in (await query(UsageQuery(tenant="beta", job_id="batch_x"))).rows] == [1]
