"""Batch jobs end to end on the real vLLM CPU engine (issue 14): a job of ``SF_E2E_BATCH_ITEMS``
(default 2,000) requests through the official OpenAI SDK's ``files.create`` and ``batches.create``,
and the same job published on the bus by the tenant's own NATS user. Each must complete with every
item answered exactly once, an output file in OpenAI's batch output format, and each item charged
once, at bulk priority, with the batch discount.

The system is the one `make run` starts (``made_run``). Figures (wall time, items/s, output
tokens/s) are printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.msg import Msg
from openai import NotFoundError, OpenAI
from openai.types import Batch
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ConfigDict

from contracts.subjects import public_bulk_end_subject, public_bulk_output_subject, public_bulk_subject
from contracts.v1 import BulkEnd, BulkLine, bus_batch_id
from contracts.v1.batch import BulkOutputLine
from tests.e2e.conftest import LiveSystem

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]
KEY = "sk-skinflint-demo"
TENANT = "demo"
#: The tenant's NATS user (infra/nats/users.conf: its development password) and inbox prefix.
BUS_USER, BUS_PASSWORD, BUS_INBOX = "demo", "sf-bus-demo-dev", "_INBOX_demo"
MODEL = "smollm2-135m"
MAX_TOKENS = 8
ITEMS = int(os.environ.get("SF_E2E_BATCH_ITEMS", "2000"))
#: How long a job may take: generous for a loaded 2-core machine (the engine answers these items
#: at about 15 per second there).
JOB_TIMEOUT_S = 600 + ITEMS * 0.5
TERMINAL = {"completed", "failed", "expired", "cancelled"}

SUBJECTS = ["a cat", "the sea", "a red apple", "winter", "a violin", "the moon", "a bicycle", "bread",
            "a lighthouse", "coffee", "a volcano", "the desert", "a library", "snow", "a river", "a clock"]
ASKS = ["Describe {s} in one short sentence.", "Give one adjective for {s}.", "Write a haiku line about {s}.",
        "Name a colour you link with {s}.", "Say why people like {s}.", "Tell a fact about {s}.",
        "Compare {s} to a number: {n}.", "Invent a name for {s} number {n}."]


class RequestOutput(BaseModel):
    """A line of OpenAI's batch output file (the "request output object"), exactly its fields."""

    model_config = ConfigDict(extra="forbid")

    class Response(BaseModel):
        model_config = ConfigDict(extra="forbid")
        status_code: int
        request_id: str
        body: dict[str, Any]

    id: str
    custom_id: str
    response: Response | None
    error: dict[str, Any] | None


@dataclass
class Figures:
    name: str
    items: int
    wall_s: float
    output_tokens: int

    def line(self) -> str:
        return (f"{self.name}: {self.items} items in {self.wall_s:.1f} s = {self.items / self.wall_s:.1f} items/s, "
                f"{self.output_tokens} output tokens = {self.output_tokens / self.wall_s:.1f} tokens/s")


def prompt(job: str, i: int) -> str:
    ask = ASKS[i % len(ASKS)].format(s=SUBJECTS[(i // len(ASKS)) % len(SUBJECTS)], n=i)
    return f"[{job} {i}] {ask}"


def body(job: str, i: int) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": MAX_TOKENS, "temperature": 0,
            "messages": [{"role": "user", "content": prompt(job, i)}]}


def sdk(live: LiveSystem) -> OpenAI:
    return OpenAI(base_url=f"{live.base_url}/v1", api_key=KEY, max_retries=2, timeout=120)


def say(text: str) -> None:
    print(f"[batch e2e] {text}", flush=True)


def follow(client: OpenAI, batch_id: str, timeout_s: float) -> Batch:
    """The batch once terminal, its progress logged every ~10 s (NotFound until it exists:
    a bus job's batch is created when its end message is read)."""
    deadline = time.monotonic() + timeout_s
    last_log = 0.0
    last: Batch | None = None
    while time.monotonic() < deadline:
        try:
            last = client.batches.retrieve(batch_id)
        except NotFoundError:
            last = None
        if last is not None and last.status in TERMINAL:
            return last
        if time.monotonic() - last_log >= 10:
            last_log = time.monotonic()
            counts = last.request_counts if last is not None else None
            say(f"{batch_id}: {last.status if last else 'not yet created'} "
                f"{counts.completed if counts else 0}/{counts.total if counts else '?'} done, "
                f"{counts.failed if counts else 0} failed")
        time.sleep(1.0)
    raise AssertionError(f"{batch_id} not finished within {timeout_s:.0f} s: {last}")


def check_output(client: OpenAI, batch: Batch, custom_ids: dict[str, int]) -> int:
    """Every line of the output file is OpenAI's request output object with a 200 chat completion;
    each custom_id once, each with its own item's request id. Returns the output tokens."""
    assert batch.status == "completed", batch
    counts = batch.request_counts
    assert counts is not None and (counts.total, counts.completed, counts.failed) == (ITEMS, ITEMS, 0), counts
    if batch.error_file_id is not None:
        assert client.files.content(batch.error_file_id).text.strip() == ""
    assert batch.output_file_id is not None
    output = client.files.retrieve(batch.output_file_id)
    assert output.purpose == "batch_output"
    seen: dict[str, int] = {}
    batch_req_ids: set[str] = set()
    tokens = 0
    for raw in client.files.content(batch.output_file_id).text.splitlines():
        line = RequestOutput.model_validate_json(raw)
        BulkOutputLine.model_validate_json(raw)
        assert line.id.startswith("batch_req_") and line.error is None and line.response is not None
        assert line.response.status_code == 200
        completion = ChatCompletion.model_validate(line.response.body)
        assert completion.object == "chat.completion" and completion.choices[0].message.content is not None
        assert completion.usage is not None and 0 < completion.usage.completion_tokens <= MAX_TOKENS
        assert line.custom_id in custom_ids, line.custom_id
        assert line.response.request_id == f"{batch.id}-{custom_ids[line.custom_id]}"
        seen[line.custom_id] = seen.get(line.custom_id, 0) + 1
        batch_req_ids.add(line.id)
        tokens += completion.usage.completion_tokens
    assert seen == dict.fromkeys(custom_ids, 1), "every custom_id exactly once"
    assert len(batch_req_ids) == ITEMS
    assert batch.usage is not None and batch.usage.output_tokens == tokens
    return tokens


def check_charges(live: LiveSystem, batch_id: str) -> None:
    """Each item charged exactly once, at bulk priority with the batch discount: in the ledger and
    in GET /v1/usage?job_id=."""
    db = Path(live.database_url.removeprefix("sqlite+aiosqlite:///"))
    expected = {f"{batch_id}-{i}" for i in range(ITEMS)}
    deadline = time.monotonic() + 120
    rows: list[tuple[str, str, str, int, int, str]] = []
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT request_id, priority, tenant, cost_nanousd, bulk_saved_nanousd, "
                                "cache_outcome FROM usage_records WHERE job_id = ?", (batch_id,)).fetchall()
        if len(rows) >= ITEMS:
            break
        time.sleep(1.0)
    assert {r[0] for r in rows} == expected and len(rows) == ITEMS
    assert {(r[1], r[2]) for r in rows} == {("bulk", TENANT)}
    assert all(r[4] > 0 for r in rows if r[3] > 0), "a charged item without the batch discount"
    outcomes: dict[str, int] = {}
    for r in rows:
        outcomes[r[5]] = outcomes.get(r[5], 0) + 1
    say(f"{batch_id}: cache outcomes {outcomes}")
    reply = httpx.get(f"{live.base_url}/v1/usage", params={"job_id": batch_id}, timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"})
    assert reply.status_code == 200, reply.text
    report = reply.json()["rows"]
    assert {row["tenant"] for row in report} == {TENANT}
    assert sum(row["requests"] for row in report) == ITEMS
    saved = sum(Decimal(row["bulk_saved_usd"]) for row in report)
    cost = sum(Decimal(row["cost_usd"]) for row in report)
    assert saved > 0
    say(f"{batch_id}: charged ${cost} for {ITEMS} items, the batch discount saved ${saved}")


def report(figures: Figures, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\n[batch e2e] {figures.line()}", flush=True)


def test_a_batch_through_the_openai_sdk(made_run: LiveSystem, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    job = f"sdk-{uuid.uuid4().hex[:6]}"
    path = tmp_path / "input.jsonl"
    custom_ids = {f"{job}-{i}": i for i in range(ITEMS)}
    path.write_text("".join(json.dumps({"custom_id": f"{job}-{i}", "method": "POST", "url": "/v1/chat/completions",
                                        "body": body(job, i)}) + "\n" for i in range(ITEMS)))
    client = sdk(made_run)
    started = time.monotonic()
    with path.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"suite": "e2e", "job": job})
    assert batch.metadata == {"suite": "e2e", "job": job}
    done = follow(client, batch.id, JOB_TIMEOUT_S)
    wall = time.monotonic() - started
    tokens = check_output(client, done, custom_ids)
    check_charges(made_run, done.id)
    report(Figures("OpenAI SDK job", ITEMS, wall, tokens), capsys)


async def publish_job(live: LiveSystem, job: str) -> None:
    """The job's lines then its end, as the tenant's NATS user; each stored by JetStream (its
    PubAck comes back under the tenant's inbox prefix)."""
    refused: list[str] = []

    async def on_error(exc: Exception) -> None:
        refused.append(str(exc))

    nc = await nats.connect(live.stack.public_nats_url, user=BUS_USER, password=BUS_PASSWORD,
                            inbox_prefix=BUS_INBOX, error_cb=on_error)
    try:
        js = nc.jetstream(timeout=30)
        subject = public_bulk_subject(TENANT, job)
        for i in range(ITEMS):
            line = BulkLine(custom_id=f"{job}-{i}", body=body(job, i))
            await js.publish(subject, line.model_dump_json().encode(), headers={"Nats-Msg-Id": f"{job}-{i}"})
        end = BulkEnd(lines=ITEMS, metadata={"suite": "e2e", "job": job})
        await js.publish(public_bulk_end_subject(TENANT, job), end.model_dump_json().encode(),
                         headers={"Nats-Msg-Id": f"{job}-end"})
        assert not refused, refused
    finally:
        await nc.drain()


async def subscribe_until(live: LiveSystem, job: str, received: Callable[[bytes], None],
                          done: asyncio.Event) -> None:
    """The job's live output lines (core NATS: at most once each), as the tenant's NATS user, whose
    permissions allow its own jobs' output subjects, until ``done``."""
    nc = await nats.connect(live.stack.public_nats_url, user=BUS_USER, password=BUS_PASSWORD,
                            inbox_prefix=BUS_INBOX)

    async def on_line(msg: Msg) -> None:
        received(msg.data)

    try:
        await nc.subscribe(public_bulk_output_subject(TENANT, job), cb=on_line)
        await done.wait()
        await asyncio.sleep(1.0)
    finally:
        await nc.drain()


async def test_the_same_job_through_the_bus_subject(made_run: LiveSystem,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    job = f"bus-{uuid.uuid4().hex[:6]}"
    custom_ids = {f"{job}-{i}": i for i in range(ITEMS)}
    live_lines: list[BulkOutputLine] = []

    def received(data: bytes) -> None:
        live_lines.append(BulkOutputLine.model_validate_json(data))

    client = sdk(made_run)
    done = asyncio.Event()
    listener = asyncio.create_task(subscribe_until(made_run, job, received, done))
    started = time.monotonic()
    await publish_job(made_run, job)
    published = time.monotonic() - started
    say(f"{job}: {ITEMS} lines and the end published in {published:.1f} s")
    batch = await asyncio.to_thread(follow, client, bus_batch_id(TENANT, job), JOB_TIMEOUT_S)
    wall = time.monotonic() - started
    done.set()
    await listener
    assert batch.metadata == {"suite": "e2e", "job": job}
    tokens = await asyncio.to_thread(check_output, client, batch, custom_ids)
    await asyncio.to_thread(check_charges, made_run, batch.id)
    live_ids = {line.custom_id for line in live_lines}
    assert live_ids <= set(custom_ids) and all(line.succeeded for line in live_lines)
    say(f"{job}: {len(live_lines)} live output lines received on the bus ({len(live_ids)} distinct items)")
    report(Figures("bus job", ITEMS, wall, tokens), capsys)
