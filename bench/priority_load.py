"""The priority bench's load: bulk work into skinflint (bus or batch API), chats through ingress, heartbeats.

``bench/priority.py`` runs these; ``bench/priority_stats.py`` has the arithmetic.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from tqdm import tqdm

from contracts.subjects import (
    BULK_STREAM,
    HEARTBEAT_SUBJECT,
    Priority,
    bulk_durable,
    bulk_result_subject,
    infer_subject,
)
from contracts.v1 import REPLY_ADAPTER, ChatMessage, ChatRequest, Final, Route, TaskEnvelope, WorkerHeartbeat

try:  # `python -m bench.priority` from the repo root
    from bench import common
    from bench import priority_stats as ps
except ModuleNotFoundError:  # `python bench/priority.py`: bench/ itself is on the path
    import common  # type: ignore[no-redef]
    import priority_stats as ps  # type: ignore[no-redef]

TIER = "small"
TENANT = "demo"
#: Short chat questions: the interactive traffic.
CHAT_PROMPTS = [
    "What is the capital of France?", "Name three primary colours.", "How many legs does a spider have?",
    "What is 12 times 7?", "Who wrote Romeo and Juliet?", "What is the boiling point of water?",
    "Say hello in Spanish.", "What colour is the sky on a clear day?", "Name a fruit that is yellow.",
    "What is the largest planet in our solar system?", "How many days are in a week?",
    "What language is spoken in Brazil?",
]


# --- the bus side: bulk tasks, their results, the worker's heartbeats ----------------------------

@dataclass
class BusProbe:
    """One NATS connection: publishes bulk tasks, records their results and the heartbeats."""

    nc: NATS
    js: JetStreamContext
    max_tokens: int
    #: request id -> (monotonic time its result arrived, completion tokens; -1 for an error)
    results: dict[str, tuple[float, int]] = field(default_factory=dict)
    #: (monotonic time, inflight_bulk, inflight_interactive) of each heartbeat
    beats: list[tuple[float, int, int]] = field(default_factory=list)
    on_result: Callable[[], None] | None = None

    @classmethod
    async def connect(cls, url: str, max_tokens: int) -> BusProbe:
        nc = await nats.connect(url)
        probe = cls(nc, nc.jetstream(), max_tokens)
        await nc.subscribe(bulk_result_subject(">"), cb=probe._on_result)
        await nc.subscribe(HEARTBEAT_SUBJECT, cb=probe._on_beat)
        return probe

    async def _on_result(self, msg: Msg) -> None:
        reply = REPLY_ADAPTER.validate_json(msg.data)
        if reply.request_id in self.results:
            return
        tokens = reply.usage.completion_tokens if isinstance(reply, Final) else -1
        self.results[reply.request_id] = (time.monotonic(), tokens)
        if self.on_result is not None:
            self.on_result()

    async def _on_beat(self, msg: Msg) -> None:
        beat = WorkerHeartbeat.model_validate_json(msg.data)
        self.beats.append((time.monotonic(), beat.inflight_bulk, beat.inflight_interactive))

    async def publish(self, job: str, index: int, max_tokens: int | None = None) -> str:
        prompt = common.PROMPTS[index % len(common.PROMPTS)]
        request = ChatRequest(model=common.MODEL, messages=[ChatMessage(role="user", content=prompt)],
                              max_tokens=max_tokens or self.max_tokens, temperature=0.0, stream=False)
        rid = f"{job}-{index}"
        env = TaskEnvelope(request_id=rid, tenant=TENANT, api_key_id="demo-dev", priority=Priority.BULK,
                           request=request, route=Route(model=common.MODEL, tier=TIER),
                           reply_subject=bulk_result_subject(job), itinerary=["infer"],
                           received_at=time.time(), job_id=job)
        await self.js.publish(infer_subject(TIER, Priority.BULK), env.model_dump_json().encode(),
                              headers={"Nats-Msg-Id": rid})
        return rid

    async def pending(self) -> int:
        """Bulk tasks of the tier no worker has pulled yet."""
        info = await self.js.consumer_info(BULK_STREAM.name, bulk_durable(TIER))
        return int(info.num_pending or 0)

    async def purge(self) -> None:
        await self.js.purge_stream(BULK_STREAM.name)

    def inflight_bulk(self) -> int:
        return self.beats[-1][1] if self.beats else 0

    async def wait_beat(self, ok: Callable[[int], bool], timeout_s: float, what: str) -> None:
        """Wait for a heartbeat sent after now whose inflight_bulk satisfies ``ok``."""
        since = time.monotonic()
        deadline = since + timeout_s
        while time.monotonic() < deadline:
            if self.beats and self.beats[-1][0] > since and ok(self.beats[-1][1]):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the worker never reported {what} within {timeout_s:.0f} s "
                           f"(inflight_bulk {self.inflight_bulk()})")

    async def close(self) -> None:
        await self.nc.close()


class BatchApi:
    """Bulk work as a user submits it: a JSONL file of chat requests and a batch (openai SDK)."""

    def __init__(self, base_url: str, max_tokens: int) -> None:
        from openai import AsyncOpenAI

        self.client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key=common.API_KEY, max_retries=0)
        self.max_tokens = max_tokens

    async def submit(self, n: int) -> tuple[str, list[str]]:
        """A batch of ``n`` requests (prompt i mod len(PROMPTS)): its id and its items' request ids."""
        from services.batch.output import item_request_id

        lines = [json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                             "body": {**common.chat_body(common.PROMPTS[i % len(common.PROMPTS)], self.max_tokens),
                                      "stream": False}}) for i in range(n)]
        upload = await self.client.files.create(file=("bench.jsonl", "\n".join(lines).encode()), purpose="batch")
        batch = await self.client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                                 completion_window="24h")
        return batch.id, [item_request_id(batch.id, i) for i in range(n)]

    async def cancel(self, batch_id: str) -> None:
        await self.client.batches.cancel(batch_id)

    async def close(self) -> None:
        await self.client.close()


# --- throughput ------------------------------------------------------------------------------------

async def skinflint_bulk_run(probe: BusProbe, api: BatchApi | None, job: str, n: int,
                             edge: int) -> dict[str, Any]:
    """A backlog of ``n`` bulk tasks, no chat: the steady-state output tokens/s of their results, and
    the worker's bulk tasks in flight (heartbeats) in that steady window."""
    bar = tqdm(total=n, desc=f"skinflint bulk {job}", unit="req", leave=False)
    probe.on_result = lambda: bar.update(1)
    if api is None:
        ids = [await probe.publish(job, i) for i in range(n)]
    else:
        job, ids = await api.submit(n)
    deadline = time.monotonic() + 60 + n * probe.max_tokens * 0.05
    while sum(1 for rid in ids if rid in probe.results) < n:
        if time.monotonic() > deadline:
            got = sum(1 for rid in ids if rid in probe.results)
            raise RuntimeError(f"only {got} of {n} bulk results arrived")
        await asyncio.sleep(0.2)
    probe.on_result = None
    bar.close()
    finishes = [probe.results[rid] for rid in ids]
    errors = sum(1 for _, tokens in finishes if tokens < 0)
    rate = ps.steady_rate([(t, max(0, tok)) for t, tok in finishes], edge)
    start, end = ps.steady_window([t for t, _ in finishes], edge)
    return {"who": "skinflint", "job": job, "requests": n, "errors": errors,
            "completion_tokens": [tok for _, tok in finishes], "rate": asdict(rate),
            "inflight_bulk": [b for t, b, _ in probe.beats if start <= t <= end]}


async def ttft_call(client: httpx.AsyncClient, base_url: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    body = {"model": common.MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    started = time.perf_counter()
    first: float | None = None
    try:
        async with client.stream("POST", f"{base_url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return {"ok": False, "error": f"{r.status_code} {(await r.aread())[:200]!r}"}
            async for line in r.aiter_lines():
                if first is None and line.startswith("data: ") and line != "data: [DONE]":
                    choices = json.loads(line[6:]).get("choices") or [{}]
                    if (choices[0].get("delta") or {}).get("content"):
                        first = time.perf_counter()
    except httpx.HTTPError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    if first is None:
        return {"ok": False, "error": "no content chunk"}
    return {"ok": True, "ttft_ms": (first - started) * 1000, "total_ms": (time.perf_counter() - started) * 1000}


async def chat_block(client: httpx.AsyncClient, base_url: str, offsets: list[float], max_tokens: int,
                     label: str) -> list[dict[str, Any]]:
    async def one(i: int, at: float) -> dict[str, Any]:
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        return await ttft_call(client, base_url, CHAT_PROMPTS[i % len(CHAT_PROMPTS)], max_tokens)

    start = time.monotonic()
    calls = await asyncio.gather(*(one(i, at) for i, at in enumerate(offsets)))
    return [{"block": label, "index": i, **c} for i, c in enumerate(calls)]


async def keep_backlog(probe: BusProbe, job: str, want: int, seen: list[int]) -> None:
    """Keep ``want`` bulk tasks waiting beyond those running, until cancelled; ``seen`` gets how
    many were waiting at each look (the proof that the worker never ran out of bulk work)."""
    index = itertools.count()
    while True:
        pending = await probe.pending()
        seen.append(pending)
        for _ in range(ps.top_up(pending, want)):
            await probe.publish(job, next(index))
        await asyncio.sleep(0.2)


async def watch_backlog(probe: BusProbe, seen: list[int]) -> None:
    """Record how many bulk tasks wait in SF_BULK (``seen``), every 0.2 s until cancelled."""
    while True:
        seen.append(await probe.pending())
        await asyncio.sleep(0.2)


async def ttft_blocks(args: Any, bulk_slots: int, probe: BusProbe, api: BatchApi | None,
                      client: httpx.AsyncClient, base_url: str, bulk_tps: float) -> list[dict[str, Any]]:
    """Chat blocks in ABBA order, without and with a bulk backlog (``args``: the bench's options)."""
    offsets = ps.arrival_offsets(args.block, args.gap_ms / 1000, args.seed)
    blocks: list[dict[str, Any]] = []
    for pair, kind in tqdm(ps.block_order(args.pairs), desc="TTFT blocks", unit="block"):
        label = f"{kind}{pair}"
        backlog: asyncio.Task[None] | None = None
        batch_id: str | None = None
        waiting: list[int] = []
        try:
            if kind == ps.BULK and api is not None:
                # One batch that outlasts the block (filling the slots, the block, a margin), cancelled after it.
                batch_id, _ = await api.submit(ps.batch_lines(bulk_tps, args.max_tokens, offsets[-1] + 60,
                                                              bulk_slots))
                backlog = asyncio.create_task(watch_backlog(probe, waiting))
            elif kind == ps.BULK:
                backlog = asyncio.create_task(keep_backlog(probe, f"ttft{pair}", bulk_slots, waiting))
            if kind == ps.BULK:
                try:
                    await probe.wait_beat(lambda n: n >= bulk_slots, 60, f"all {bulk_slots} bulk slots busy")
                except RuntimeError as exc:  # measured anyway: the report shows how busy the slots were
                    common.log(f"WARNING: {exc}")
            else:
                await probe.wait_beat(lambda n: n == 0, 120, "no bulk work")
                await asyncio.sleep(1.5)  # vLLM's engine keeps polling for 1 s after its last step
            started = time.monotonic()
            del waiting[:]  # what waited while the chats ran
            calls = await asyncio.wait_for(chat_block(client, base_url, offsets, args.chat_max_tokens, label),
                                           timeout=offsets[-1] + 300)
            ended = time.monotonic()
        finally:
            if backlog is not None:
                backlog.cancel()
                await asyncio.gather(backlog, return_exceptions=True)
            if batch_id is not None and api is not None:
                await api.cancel(batch_id)  # queued items are dropped; those handed to the worker finish
            elif backlog is not None:
                await probe.purge()  # what is still queued goes; what runs finishes
        beats = [(b, i) for t, b, i in probe.beats if started <= t <= ended]
        ttfts = [c["ttft_ms"] for c in calls if c["ok"]]
        tqdm.write(f"{time.strftime('%H:%M:%S')} block {label}: {len(ttfts)} answers, TTFT p50 "
                   f"{common.percentile(ttfts, 50):.0f} ms, p95 {common.percentile(ttfts, 95):.0f} ms, "
                   f"bulk in flight {min((b for b, _ in beats), default=0)}-{max((b for b, _ in beats), default=0)}")
        blocks.append({"pair": pair, "kind": kind, "calls": calls, "inflight_bulk": [b for b, _ in beats],
                       "inflight_interactive": [i for _, i in beats], "seconds": ended - started,
                       "bulk_waiting": list(waiting), "loadavg_1m": os.getloadavg()[0]})
    await probe.wait_beat(lambda n: n == 0, 120, "no bulk work")
    return blocks


