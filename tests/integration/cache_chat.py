"""Helpers of the cache's integration tests: a chat stack with the cache stage, and requests
that wait until the cache has learnt their answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from services.cache.service import CacheService
from services.ingress.service import IngressService
from services.shared import metrics
from tests.integration.conftest import FakeEngine, running_cache, running_ingress, running_worker

ACME = {"Authorization": "Bearer sk-skinflint-acme"}
SHADOW = {"Authorization": "Bearer sk-skinflint-shadow"}
ADMIN = {"Authorization": "Bearer sk-skinflint-admin"}


@asynccontextmanager
async def chat_stack(nats_url: str, tenants_file: Path, engine: FakeEngine | None = None,
                     with_cache: bool = True) -> AsyncIterator[tuple[IngressService, httpx.AsyncClient,
                                                                      CacheService | None]]:
    async with AsyncExitStack() as stack:
        cache = await stack.enter_async_context(running_cache(nats_url)) if with_cache else None
        await stack.enter_async_context(running_worker(nats_url, engine=engine))
        ingress, client = await stack.enter_async_context(
            running_ingress(nats_url, tenants_file=str(tenants_file), pipeline=["cache", "infer"]))
        for _ in range(100):  # until the worker's heartbeat reached ingress
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        yield ingress, client, cache


def counted(counter: Any, **labels: str) -> float:
    """A counter's value in this process (the stage and the worker run in it), for ``labels``."""
    return sum(sample.value for family in counter.collect() for sample in family.samples
               if sample.name.endswith("_total") and all(sample.labels.get(k) == v for k, v in labels.items()))


def stores_seen(outcome: str | None = None) -> float:
    """Announced answers the cache has handled so far (stored or declined; only those with
    ``outcome`` when given), in this process."""
    return counted(metrics.CACHE_STORES, **({} if outcome is None else {"outcome": outcome}))


async def until_declined(outcome: str, before: float) -> None:
    for _ in range(200):
        if stores_seen(outcome) > before:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no announced answer was declined as {outcome!r}")


async def ask(client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str] | None = None,
              learnt: bool = True) -> httpx.Response:
    """POST a chat request; with ``learnt``, also wait until the cache has handled the answer's
    announcement (a miss is learnt after the reply, off the client's path)."""
    before = stores_seen()
    r = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 200, r.text
    if learnt and r.headers.get("x-skinflint-cache") in ("miss", "bypass"):
        for _ in range(200):
            if stores_seen() > before:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the cache never handled the announced answer")
    return r


def outcome(r: httpx.Response) -> str:
    return r.headers["x-skinflint-cache"]
