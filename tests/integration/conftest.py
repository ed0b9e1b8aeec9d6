"""Integration fixtures: real nats-server, services started in-process or as processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from contracts.subjects import KNOWN_STAGES
from services.cache.service import CacheService
from services.cache.settings import CacheSettings
from services.classifier.service import ClassifierService
from services.classifier.settings import ClassifierSettings
from services.ingress.service import IngressService
from services.ingress.settings import IngressSettings
from services.stack import Stack
from services.worker.service import WorkerService
from services.worker.settings import WorkerSettings
from tests.support.config import TEST_TIERS
from tests.support.fakes import FakeEngine
from tests.support.natsd import NatsServer

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": "Bearer sk-skinflint-demo"}
#: Stages a test pipeline may name: the real ones and the probes tests run themselves.
TEST_STAGES = (*KNOWN_STAGES, "probe", "probe2", "probe3", "lonely")


@asynccontextmanager
async def running_ingress(
    nats_url: str, stages: tuple[str, ...] = TEST_STAGES, **overrides: Any
) -> AsyncIterator[tuple[IngressService, httpx.AsyncClient]]:
    settings = IngressSettings(**{"nats_url": nats_url, "port": 0, "tiers_file": TEST_TIERS, "drain_timeout_s": 10,
                                  "tenants_file": str(ROOT / "infra/config/tenants.yaml"), **overrides})
    service = IngressService(settings, stages)
    await service.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}", headers=AUTH,
                                     timeout=30) as client:
            yield service, client
    finally:
        await service.drain()
        await service.close()


@asynccontextmanager
async def running_worker(
    nats_url: str, seconds_per_token: float = 0.0, engine: FakeEngine | None = None, **overrides: Any
) -> AsyncIterator[WorkerService]:
    settings = WorkerSettings(nats_url=nats_url, heartbeat_interval_s=0.2, drain_timeout_s=10, **overrides)
    service = WorkerService(settings, lambda s: engine or FakeEngine(seconds_per_token=seconds_per_token))
    await service.start()
    try:
        yield service
    finally:
        await service.drain()
        await service.close()


@asynccontextmanager
async def running_cache(nats_url: str, qdrant_path: Path | None = None, *, purge: bool = True,
                        **overrides: Any) -> AsyncIterator[CacheService]:
    """The cache stage with its real stores: JetStream KV on ``nats_url``, Qdrant local mode in
    ``qdrant_path`` (in memory when None), the real embedder and verifier artifact. ``purge``
    empties both stores first (the NATS server is shared by the session's tests)."""
    settings = CacheSettings(nats_url=nats_url, health_port=0, drain_timeout_s=10, qdrant_path=qdrant_path,
                             **overrides)
    service = CacheService(settings)
    await service.start()
    try:
        if purge:
            assert service.logic is not None
            await service.logic.exact.purge_all()
            if service.index is not None:
                await service.index.invalidate()
        yield service
    finally:
        await service.drain()
        await service.close()


@asynccontextmanager
async def running_classifier(nats_url: str, tiers: Path) -> AsyncIterator[ClassifierService]:
    """The classifier stage with the tiers file ``tiers`` (its routing and policy)."""
    service = ClassifierService(ClassifierSettings(nats_url=nats_url, tiers_file=str(tiers), health_port=0,
                                                   drain_timeout_s=10))
    await service.start()
    try:
        yield service
    finally:
        await service.drain()
        await service.close()


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Callable[[], Stack]]:
    """Processes started the way a user starts them (python -m ...), stopped at the end."""
    stacks: list[Stack] = []

    def make() -> Stack:
        stack = Stack(var_dir=tmp_path / f"stack{len(stacks)}", env={"SF_HEARTBEAT_INTERVAL_S": "0.3"})
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()


def chat(content: str = "hello", **fields: Any) -> dict[str, Any]:
    return {"model": "smollm2-135m", "messages": [{"role": "user", "content": content}], **fields}


@pytest.fixture
def tenants_file(tmp_path: Path) -> Path:
    """The shipped tenants plus one whose cache runs in shadow mode (the cache's tests)."""
    config = yaml.safe_load((ROOT / "infra/config/tenants.yaml").read_text())
    config["tenants"].append({"name": "shadowed", "keys": [{"id": "shadow-dev", "key": "sk-skinflint-shadow"}],
                              "cache": {"mode": "shadow"}})
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


__all__ = ["AUTH", "FakeEngine", "NatsServer", "chat", "running_cache", "running_classifier", "running_ingress",
           "running_worker"]
