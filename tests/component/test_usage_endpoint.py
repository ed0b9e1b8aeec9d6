"""GET /v1/usage against a scripted accounting responder on a real nats-server: the query ingress
sends (tenant scope, ``since``, a batch's ``job_id``) and its refusals of bad parameters."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from faststream.nats import NatsBroker

from contracts.subjects import USAGE_QUERY_SUBJECT
from contracts.v1 import UsageQuery, UsageReport, UsageRow
from services.ingress.dispatch import Dispatcher
from services.ingress.gateway import Gateway
from services.ingress.http import create_http_app
from services.ingress.settings import IngressSettings
from services.ingress.tenants import Gate, TenantsFile
from services.shared.broker import make_broker
from services.shared.settings import load_config_file
from services.shared.tiers import load_tiers
from tests.support.natsd import NatsServer

pytestmark = pytest.mark.component
DEMO = {"Authorization": "Bearer sk-usage-demo"}
ADMIN = {"Authorization": "Bearer sk-usage-admin"}
TENANTS = """
tenants:
  - name: demo
    keys: [{id: demo, key: sk-usage-demo}]
  - name: ops
    admin: true
    keys: [{id: ops, key: sk-usage-admin}]
"""


@pytest.fixture
async def asked(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[tuple[httpx.AsyncClient, list[UsageQuery]]]:
    """Ingress's HTTP app, and the queries a scripted accounting service received from it."""
    (tmp_path / "tenants.yaml").write_text(TENANTS)
    (tmp_path / "tiers.yaml").write_text("tiers: {usage-t: {kind: vllm, model: m}}\nmodels: {m: {tier: usage-t}}\n")
    settings = IngressSettings(nats_url=nats_server.url, tenants_file=str(tmp_path / "tenants.yaml"),
                               instance_id=f"ing-{uuid.uuid4().hex[:8]}", tiers_file=str(tmp_path / "tiers.yaml"))
    broker = make_broker("ingress", settings, None)
    dispatcher = Dispatcher(broker, settings.instance_id, hop_timeout_s=1, liveness_s=5)
    gateway = Gateway(settings, Gate(load_config_file(settings.tenants_file, TenantsFile)), dispatcher,
                      load_tiers(settings.tiers_file))
    queries: list[UsageQuery] = []
    accounting = NatsBroker(nats_server.url)

    @accounting.subscriber(USAGE_QUERY_SUBJECT)
    async def answer(query: UsageQuery) -> UsageReport:
        queries.append(query)
        return UsageReport(rows=[UsageRow(tenant=query.tenant or "all", tier="small", requests=2, prompt_tokens=1,
                                          cached_prompt_tokens=0, completion_tokens=1, cost_usd="0.000000001",
                                          reference_cost_usd="0.000000002")])

    await broker.start()
    await dispatcher.connect()
    await accounting.start()
    await accounting.connection.flush()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_http_app(gateway)),
                                     base_url="http://ingress") as client:
            yield client, queries
    finally:
        await accounting.stop()
        await broker.stop()


async def test_a_jobs_usage_is_asked_for_within_the_callers_tenant(
        asked: tuple[httpx.AsyncClient, list[UsageQuery]]) -> None:
    client, queries = asked
    r = await client.get("/v1/usage", params={"job_id": "batch_1", "since": 5}, headers=DEMO)
    assert r.status_code == 200, r.text
    assert [row["requests"] for row in r.json()["rows"]] == [2]
    r = await client.get("/v1/usage", params={"job_id": "batch_1", "tenant": "demo"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    r = await client.get("/v1/usage", params={"job_id": "batch_1"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert queries == [UsageQuery(tenant="demo", since=5, job_id="batch_1"),
                       UsageQuery(tenant="demo", job_id="batch_1"), UsageQuery(job_id="batch_1")]


@pytest.mark.parametrize(("params", "status", "param"), [
    ({"job_id": ""}, 400, "job_id"),
    ({"job_id": "b" * 201}, 400, "job_id"),
    ({"job_id": "batch_1", "tenant": "ops"}, 403, "tenant"),  # another tenant's job: refused, not read
])
async def test_bad_usage_parameters_are_refused_naming_the_field(
        asked: tuple[httpx.AsyncClient, list[UsageQuery]], params: dict[str, str], status: int,
        param: str) -> None:
    client, queries = asked
    r = await client.get("/v1/usage", params=params, headers=DEMO)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
    assert queries == []
