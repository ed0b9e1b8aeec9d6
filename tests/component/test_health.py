"""/healthz, /readyz and /metrics as an orchestrator and Prometheus see them, without Prometheus.

A service run by ``services.shared.runner.serve`` is alive from before it starts and ready only
while it serves: a stand-in service whose start and drain wait on the test shows each phase.
Then the real worker (fake engine) and accounting under ``serve`` and ingress, on a real
nats-server, answer the three paths, and after a request no metric carries a label that could
hold a request id, a prompt or a key (the real scrape: ``tests/integration/test_prometheus.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from services.accounting.service import AccountingService
from services.accounting.settings import AccountingSettings
from services.ingress.service import IngressService
from services.ingress.settings import IngressSettings
from services.shared.runner import Service, serve
from services.stack import free_port
from services.worker.service import WorkerService
from services.worker.settings import WorkerSettings
from tests.conftest import ROOT
from tests.support.config import TEST_TIERS
from tests.support.fakes import FakeEngine
from tests.support.natsd import NatsServer

pytestmark = pytest.mark.component
AUTH = {"Authorization": "Bearer sk-skinflint-demo"}
#: The labels skinflint's metrics may have (services/shared/metrics.py), and ``le`` of histograms.
ALLOWED_LABELS = {"tenant", "tier", "priority", "status", "outcome", "stage", "kind", "stream", "mode", "match",
                  "verdict", "policy", "live_tier", "fallback", "embedded", "le"}
#: Label names that would give every request a series of its own, or leak what it said.
FORBIDDEN_LABEL = re.compile(r"request|prompt|key|user|content|message|trace|span|session|url", re.IGNORECASE)


@pytest.fixture(autouse=True)
def unfrozen_heap() -> Iterator[None]:
    """``serve`` freezes the heap after start-up, as a service process should; the test process
    lets the collector have it back."""
    yield
    gc.unfreeze()


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if await check():
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout_s:.0f} s: {what}")


class Gated:
    """A service whose start and drain finish when the test says so."""

    name = "gated"

    def __init__(self) -> None:
        self.may_start = asyncio.Event()
        self.may_finish_draining = asyncio.Event()
        self.able = True
        self.closed = False

    async def start(self) -> None:
        await self.may_start.wait()

    async def drain(self) -> None:
        await self.may_finish_draining.wait()

    async def close(self) -> None:
        self.closed = True

    def ready(self) -> tuple[bool, dict[str, Any]]:
        return self.able, {"engine": "loaded" if self.able else "lost"}


async def status_and_body(client: httpx.AsyncClient, path: str) -> tuple[int, dict[str, Any]]:
    r = await client.get(path)
    return r.status_code, r.json()


async def test_readyz_is_503_while_starting_and_draining_and_healthz_is_200_throughout() -> None:
    service = Gated()
    stop = asyncio.Event()
    port = free_port()
    serving = asyncio.create_task(serve(service, drain_timeout_s=10, stop=stop, health=("127.0.0.1", port)))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            async def alive() -> bool:
                return (await client.get("/healthz")).status_code == 200

            await eventually(alive, "/healthz answers while the service is starting")
            assert await status_and_body(client, "/healthz") == (200, {"status": "ok", "service": "gated"})
            assert await status_and_body(client, "/readyz") == (
                503, {"ready": False, "service": "gated", "state": "starting"})

            service.may_start.set()

            async def ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await eventually(ready, "/readyz is 200 once the service has started")
            assert await status_and_body(client, "/readyz") == (
                200, {"ready": True, "service": "gated", "state": "serving", "engine": "loaded"})
            # Serving, but the service says it cannot take work (a lost connection, say).
            service.able = False
            assert await status_and_body(client, "/readyz") == (
                503, {"ready": False, "service": "gated", "state": "serving", "engine": "lost"})
            service.able = True

            stop.set()

            async def draining() -> bool:
                return (await client.get("/readyz")).json().get("state") == "draining"

            await eventually(draining, "/readyz says draining once stopped")
            assert (await client.get("/readyz")).status_code == 503
            assert (await client.get("/healthz")).status_code == 200, "alive while draining"
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain")

            service.may_finish_draining.set()
            await asyncio.wait_for(serving, timeout=10)
        assert service.closed
        async with httpx.AsyncClient(timeout=2) as after:
            with pytest.raises(httpx.ConnectError):
                await after.get(f"http://127.0.0.1:{port}/healthz")
    finally:
        if not serving.done():
            service.may_start.set()
            service.may_finish_draining.set()
            stop.set()
            await asyncio.wait_for(serving, timeout=10)


@contextlib.asynccontextmanager
async def served(service: Service) -> AsyncIterator[int]:
    """``service`` run as ``python -m`` runs it, its health endpoints on the port yielded."""
    stop = asyncio.Event()
    port = free_port()
    task = asyncio.create_task(serve(service, drain_timeout_s=10, stop=stop, health=("127.0.0.1", port)))

    async def ready() -> bool:
        if task.done():
            await task  # raise why it stopped
        async with httpx.AsyncClient(timeout=2) as client:
            return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200

    try:
        await eventually(ready, f"{service.name} reports ready")
        yield port
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


@pytest.fixture
async def services(fresh_nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[dict[str, int]]:
    """Worker (fake engine) and accounting under ``serve``, and ingress: service -> port of its
    /healthz, /readyz and /metrics."""
    url = fresh_nats_server.url
    worker = WorkerService(WorkerSettings(nats_url=url, heartbeat_interval_s=0.2, drain_timeout_s=10),
                           lambda s: FakeEngine())
    accounting = AccountingService(AccountingSettings(
        nats_url=url, database_url=f"sqlite+aiosqlite:///{tmp_path}/ledger.db", fetch_timeout_s=0.2,
        pricebook_file=str(ROOT / "infra/config/pricebook.yaml")))
    ingress = IngressService(IngressSettings(
        nats_url=url, port=0, tenants_file=str(ROOT / "infra/config/tenants.yaml"),
        tiers_file=TEST_TIERS, drain_timeout_s=10))
    async with served(accounting) as accounting_port, served(worker) as worker_port:
        await ingress.start()
        try:
            yield {"worker": worker_port, "accounting": accounting_port, "ingress": ingress.port}
        finally:
            await ingress.drain()
            await ingress.close()


def recorded() -> float:
    return REGISTRY.get_sample_value("skinflint_usage_events_total", {"outcome": "recorded"}) or 0.0


async def test_every_service_answers_the_three_paths_and_no_label_identifies_a_request(
    services: dict[str, int],
) -> None:
    prompt = "the secret plan is 7f3a9c: keep it out of the metrics"
    before = recorded()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{services['ingress']}", headers=AUTH,
                                 timeout=30) as client:
        async def ingress_ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await eventually(ingress_ready, "ingress sees the worker")
        r = await client.post("/v1/chat/completions", json={
            "model": "smollm2-135m", "messages": [{"role": "user", "content": prompt}], "max_tokens": 3})
        assert r.status_code == 200, r.text
        request_id = r.headers["x-request-id"]

    async def charged() -> bool:
        return recorded() > before

    await eventually(charged, "accounting records the request's usage event")

    for name, port in services.items():
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            assert (await client.get("/healthz")).status_code == 200, name
            ready = await client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["ready"] is True, (name, ready.text)
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200, name
            families = {f.name for f in text_string_to_metric_families(metrics.text)}
            # One process here, so one registry: each service's page shows every family.
            assert {"skinflint_requests", "skinflint_tokens", "skinflint_usage_events"} <= families, name

    seen: set[str] = set()
    for family in REGISTRY.collect():
        for sample in family.samples:
            for label, value in sample.labels.items():
                seen.add(label)
                assert not FORBIDDEN_LABEL.search(label), f"{sample.name} has a label {label!r}"
                for secret in (request_id, prompt, "7f3a9c", AUTH["Authorization"].split()[1]):
                    assert secret not in value, f"{sample.name}{{{label}={value!r}}} holds a request's data"
            if family.name.startswith("skinflint_"):
                assert set(sample.labels) <= ALLOWED_LABELS, f"{sample.name} has labels {sorted(sample.labels)}"
    assert {"tenant", "tier", "priority", "status", "outcome", "kind"} <= seen
