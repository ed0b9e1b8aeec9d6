"""Batch helpers for tests: the batch service in-process, waiting for a job, reading its files."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from services.batch.job import TERMINAL, BatchJob
from services.batch.job_store import JobStore
from services.batch.service import BatchService
from services.batch.settings import BatchSettings
from services.batch.store import FileStore
from tests.support.config import TEST_TIERS

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def running_batch(nats_url: str, **overrides: Any) -> AsyncIterator[BatchService]:
    """The batch service with the test tiers and the shipped tenants (demo, acme, ops)."""
    fields: dict[str, Any] = {"nats_url": nats_url, "tiers_file": TEST_TIERS, "health_port": 0,
                              "drain_timeout_s": 10, "batch_sweep_interval_s": 0.2,
                              "tenants_file": str(ROOT / "infra/config/tenants.yaml"), **overrides}
    service = BatchService(BatchSettings(**fields))
    await service.start()
    try:
        yield service
    finally:
        await service.drain()
        await service.close()


async def wait_for_job(js: JetStreamContext, tenant: str, batch_id: str, timeout_s: float = 60.0,
                       until: frozenset[Any] = TERMINAL) -> BatchJob:
    """The job once its status is in ``until`` (a terminal one by default)."""
    jobs = await JobStore.open(js)
    deadline = time.monotonic() + timeout_s
    job: BatchJob | None = None
    while time.monotonic() < deadline:
        try:
            job = await jobs.get(tenant, batch_id)
        except Exception:
            job = None
        if job is not None and job.status in until:
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"batch {batch_id} did not reach {sorted(until)} in {timeout_s} s: "
                         f"{job.status if job else 'missing'} {job.progress(time.time()) if job else ''}")


async def read_lines(js: JetStreamContext, tenant: str, file_id: str | None) -> list[dict[str, Any]]:
    """A batch output or error file's lines, parsed ([] for no file)."""
    if file_id is None:
        return []
    files = await FileStore.open(js, max_bytes=1 << 30)
    data = await files.read(tenant, file_id)
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def batch_line(custom_id: str, content: str, max_tokens: int = 3, model: str = "smollm2-135m") -> dict[str, Any]:
    """One line of an OpenAI batch input file (a chat completion)."""
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]}}
