"""Chat beside bulk work (issue 14): what a bulk backlog costs chat, and what bulk gets of the engine.

Two figures from one run, both against a baseline measured in the same run:

1. Interactive time to first token: streamed chat requests through ingress at a fixed Poisson
   arrival rate, short prompts, in blocks with no bulk work and blocks during which a bulk backlog
   keeps every bulk slot of the worker busy (checked on the worker's heartbeats). Blocks run in
   ABBA order, each with the same arrival schedule and prompts. Target: p95 with bulk <= 1.5x p95
   without.
2. Bulk output tokens/s: a backlog of bulk tasks and no chat, through the real worker, against the
   same engine alone (`vllm serve`, same settings, as many concurrent requests as it has slots),
   same prompts and max_tokens, in rounds that alternate which goes first. Each rate is taken in
   the steady state: from the max_num_seqs-th completion to the max_num_seqs-th last. Target:
   >= 80% of the engine's own.

skinflint runs as `make run` starts it (nats-server, the small tier's worker with the vLLM CPU
engine, ingress), with the pipeline cut to inference alone (no cache, no classifier: what is
measured is the worker's scheduling). Bulk work is published as bulk task envelopes into SF_BULK
(`--submit bus`, the hop the batch service makes for each item), or submitted as a user does
(`--submit batch-api`: a JSONL file and a batch through the openai SDK, the batch service running;
a bulk block's batch is cancelled after the block). Raw results:
var/bench/priority-<time>/results.json. Run it under `flock /tmp/skinflint-engine.lock`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
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
    from bench import common, targets
    from bench import priority_stats as ps
except ModuleNotFoundError:  # `python bench/priority.py`: bench/ itself is on the path
    import common  # type: ignore[no-redef]
    import priority_stats as ps  # type: ignore[no-redef]
    import targets  # type: ignore[no-redef]

TTFT_TARGET = 1.5
THROUGHPUT_TARGET = 0.80
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Chat TTFT with and without a bulk backlog; bulk tokens/s against the engine alone.",
        epilog="About 10 minutes on 2 cores, two engine start-ups included.")
    parser.add_argument("--quick", action="store_true", help="a smoke run: figures are not meaningful")
    parser.add_argument("--submit", choices=["bus", "batch-api"], default="bus",
                        help="how bulk work is submitted: bus = bulk task envelopes straight into SF_BULK; "
                             "batch-api = files and batches through the openai SDK and the batch service")
    parser.add_argument("--max-num-seqs", type=int, default=32, help="engine slots, both engines (default 32)")
    parser.add_argument("--interactive-reserve", type=int, default=None,
                        help="SF_INTERACTIVE_RESERVE for the worker (default: the worker's own, 4)")
    parser.add_argument("--max-tokens", type=int, default=64, help="bulk answer length (default 64)")
    parser.add_argument("--rounds", type=int, default=None, help="throughput rounds (default 3; 1 with --quick)")
    parser.add_argument("--bulk-requests", type=int, default=None,
                        help="requests per throughput run (default 6 x max-num-seqs; 3 x with --quick)")
    parser.add_argument("--pairs", type=int, default=None, help="TTFT block pairs (default 6; 1 with --quick)")
    parser.add_argument("--block", type=int, default=None, help="chat requests per block (default 40; 10)")
    parser.add_argument("--gap-ms", type=float, default=300.0, help="mean gap between chat requests (default 300)")
    parser.add_argument("--chat-max-tokens", type=int, default=16, help="chat answer length (default 16)")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.bulk_requests = args.bulk_requests or (3 if args.quick else 6) * args.max_num_seqs
    args.pairs = args.pairs or (1 if args.quick else 6)
    args.block = args.block or (10 if args.quick else 40)
    return args


def worker_reserve(args: argparse.Namespace) -> int:
    if args.interactive_reserve is not None:
        return int(args.interactive_reserve)
    from services.worker.settings import WorkerSettings

    return int(WorkerSettings.model_fields["interactive_reserve"].default)


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
    """A backlog of ``n`` bulk tasks, no chat: the steady-state output tokens/s of their results."""
    bar = tqdm(total=n, desc=f"skinflint bulk {job}", unit="req", leave=False)
    done_before = len(probe.results)
    probe.on_result = lambda: bar.update(1)
    if api is None:
        ids = [await probe.publish(job, i) for i in range(n)]
    else:
        job, ids = await api.submit(n)
    deadline = time.monotonic() + 60 + n * probe.max_tokens * 0.05
    while sum(1 for rid in ids if rid in probe.results) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(probe.results) - done_before} of {n} bulk results arrived")
        await asyncio.sleep(0.2)
    probe.on_result = None
    bar.close()
    finishes = [probe.results[rid] for rid in ids]
    errors = sum(1 for _, tokens in finishes if tokens < 0)
    rate = ps.steady_rate([(t, max(0, tok)) for t, tok in finishes], edge)
    return {"who": "skinflint", "job": job, "requests": n, "errors": errors,
            "completion_tokens": [tok for _, tok in finishes], "rate": asdict(rate)}


async def engine_run(client: httpx.AsyncClient, base_url: str, n: int, concurrency: int, max_tokens: int,
                     edge: int, label: str) -> dict[str, Any]:
    """The engine alone: ``concurrency`` clients in a closed loop over the same ``n`` prompts."""
    counter = itertools.count()
    finishes: dict[int, tuple[float, int]] = {}
    errors: list[str] = []
    bar = tqdm(total=n, desc=f"engine alone {label}", unit="req", leave=False)

    async def loop() -> None:
        while (i := next(counter)) < n:
            body = common.chat_body(common.PROMPTS[i % len(common.PROMPTS)], max_tokens)
            try:
                r = await client.post(f"{base_url}/v1/chat/completions", json=body)
                r.raise_for_status()
                finishes[i] = (time.monotonic(), int(r.json()["usage"]["completion_tokens"]))
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                finishes[i] = (time.monotonic(), 0)
            bar.update(1)

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    bar.close()
    rate = ps.steady_rate(list(finishes.values()), edge)
    return {"who": "engine", "job": label, "requests": n, "errors": len(errors), "first_error": errors[:1],
            "completion_tokens": [finishes[i][1] for i in range(n)], "rate": asdict(rate)}


# --- time to first token ----------------------------------------------------------------------------

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


async def ttft_blocks(args: argparse.Namespace, probe: BusProbe, api: BatchApi | None, client: httpx.AsyncClient,
                      base_url: str, bulk_tps: float) -> list[dict[str, Any]]:
    bulk_slots = args.max_num_seqs - worker_reserve(args)
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
                await probe.purge()  # what is still queued goes; what runs finishes
            if batch_id is not None and api is not None:
                await api.cancel(batch_id)  # queued items are dropped; those handed to the worker finish
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


# --- the run ----------------------------------------------------------------------------------------

async def measure(args: argparse.Namespace, engine_url: str, skinflint_url: str, nats_url: str,
                  data: dict[str, Any]) -> None:
    """Fills ``data`` as it goes (``throughput``, then ``ttft``), so a failed run keeps what it measured."""
    edge = args.max_num_seqs
    probe = await BusProbe.connect(nats_url, args.max_tokens)
    engine_client = httpx.AsyncClient(limits=httpx.Limits(max_connections=256), timeout=httpx.Timeout(300.0))
    chat_client = common.make_client()
    api = BatchApi(skinflint_url, args.max_tokens) if args.submit == "batch-api" else None
    try:
        common.log("warming up both engines (a wave of bulk, a few chats)")
        await engine_run(engine_client, engine_url, args.max_num_seqs, args.max_num_seqs, 8, 1, "warm-up")
        await skinflint_bulk_run(probe, api, "warmup", args.max_num_seqs, 1)
        for i in range(4):
            await ttft_call(chat_client, skinflint_url, CHAT_PROMPTS[i], args.chat_max_tokens)
        runs: list[dict[str, Any]] = data.setdefault("throughput", [])
        for round_no in range(args.rounds):
            order = ["engine", "skinflint"] if round_no % 2 == 0 else ["skinflint", "engine"]
            for who in order:
                await asyncio.sleep(1.5)  # the other engine's busy-polling ends
                if who == "engine":
                    run = await engine_run(engine_client, engine_url, args.bulk_requests, args.max_num_seqs,
                                           args.max_tokens, edge, f"r{round_no}")
                else:
                    run = await skinflint_bulk_run(probe, api, f"tp{round_no}", args.bulk_requests, edge)
                run["round"] = round_no
                run["loadavg_1m"] = os.getloadavg()[0]
                runs.append(run)
                rate = ps.Rate(**run["rate"])
                common.log(f"round {round_no + 1}/{args.rounds} {who:>9}: {rate.per_s:7.1f} output tokens/s "
                           f"({rate.tokens} tokens in {rate.seconds:.1f} s, steady window), {run['errors']} errors")
        common.log("time to first token, blocks with and without a bulk backlog")
        bulk_tps = ps.pooled_rate([ps.Rate(**r["rate"]) for r in runs if r["who"] == "skinflint"])
        data["ttft"] = await ttft_blocks(args, probe, api, chat_client, skinflint_url, bulk_tps)
    finally:
        await engine_client.aclose()
        await chat_client.aclose()
        if api is not None:
            await api.close()
        await probe.close()


def summarise(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    runs = data["throughput"]
    rounds = []
    for r in range(args.rounds):
        mine = {run["who"]: ps.Rate(**run["rate"]) for run in runs if run["round"] == r}
        rounds.append((mine["skinflint"], mine["engine"]))
    bulk_slots = args.max_num_seqs - worker_reserve(args)
    blocks = data["ttft"]
    pairs: list[ps.BlockPair] = []
    for p in range(args.pairs):
        by_kind = {b["kind"]: [c["ttft_ms"] for c in b["calls"] if c["ok"]] for b in blocks if b["pair"] == p}
        pairs.append((by_kind[ps.IDLE], by_kind[ps.BULK]))
    idle = [v for a, _ in pairs for v in a]
    bulk = [v for _, b in pairs for v in b]
    inflight = [n for b in blocks if b["kind"] == ps.BULK for n in b["inflight_bulk"]]
    tokens = {who: [t for run in runs if run["who"] == who for t in run["completion_tokens"]]
              for who in ("engine", "skinflint")}
    return {
        "engine_tps": ps.pooled_rate([e for _, e in rounds]), "skinflint_tps": ps.pooled_rate([s for s, _ in rounds]),
        "tps_by_round": [(s.per_s, e.per_s) for s, e in rounds],
        "tps_ratio": ps.throughput_ratio(rounds), "tps_ratio_ci": ps.throughput_interval(rounds, args.seed),
        "ttft_idle": {q: common.percentile(idle, q) for q in (50, 95, 99)},
        "ttft_bulk": {q: common.percentile(bulk, q) for q in (50, 95, 99)},
        "ttft_ratio": ps.ttft_ratio(pairs), "ttft_ratio_ci": ps.ttft_interval(pairs, seed=args.seed),
        "ttft_ratio_by_pair": [ps.ttft_ratio([p]) for p in pairs],
        "ttft_p50_ratio": ps.ttft_ratio(pairs, 50),
        "n_idle": len(idle), "n_bulk": len(bulk),
        "chat_errors": sum(1 for b in blocks for c in b["calls"] if not c["ok"]),
        "bulk_errors": sum(run["errors"] for run in runs),
        "bulk_slots": bulk_slots, "busy_share": ps.busy_share(inflight, bulk_slots),
        "inflight_min": min(inflight, default=0), "inflight_max": max(inflight, default=0),
        # The backlog, sampled while the chats ran (bus submission only): never empty, or the
        # bulk blocks did not have bulk work to run.
        "waiting_min": min((n for b in blocks if b["kind"] == ps.BULK for n in b.get("bulk_waiting", [])),
                           default=None),
        "reserve": args.max_num_seqs - bulk_slots,
        # Chats beyond the reserve wait in vLLM's queue for a running bulk answer to end.
        "chat_over_reserve": {kind: ps.busy_share([i for b in blocks if b["kind"] == kind
                                                   for i in b.get("inflight_interactive", [])],
                                                  args.max_num_seqs - bulk_slots + 1)
                              for kind in (ps.IDLE, ps.BULK)},
        "loadavg_1m": [min((r.get("loadavg_1m", math.nan) for r in [*runs, *blocks]), default=math.nan),
                       max((r.get("loadavg_1m", math.nan) for r in [*runs, *blocks]), default=math.nan)],
        "mean_tokens": {who: sum(v) / len(v) if v else 0.0 for who, v in tokens.items()},
    }


def report(args: argparse.Namespace, s: dict[str, Any]) -> tuple[str, int]:
    ci = s["tps_ratio_ci"]
    lines = [f"Bulk output tokens/s, no chat (steady window; {args.rounds} rounds x {args.bulk_requests} requests, "
             f"max_tokens {args.max_tokens}, {args.max_num_seqs} engine slots, {s['bulk_slots']} bulk slots):", ""]
    rows = [["engine alone (vllm serve)", common.fmt(s["engine_tps"]), "1.00", "-",
             " ".join(common.fmt(e) for _, e in s["tps_by_round"]), common.fmt(s["mean_tokens"]["engine"])],
            ["skinflint bulk (worker)", common.fmt(s["skinflint_tps"]), common.fmt(s["tps_ratio"], 3),
             f"{ci[0]:.3f}-{ci[1]:.3f}", " ".join(common.fmt(x) for x, _ in s["tps_by_round"]),
             common.fmt(s["mean_tokens"]["skinflint"])]]
    lines += [common.table(["", "tokens/s", "ratio", "90% interval", "by round", "tokens/answer"], rows), ""]
    ci = s["ttft_ratio_ci"]
    backlog = "not sampled" if s.get("waiting_min") is None else f"at least {s['waiting_min']}"
    lines += [f"Chat time to first token, ms ({args.pairs} block pairs x {args.block} requests, mean gap "
              f"{args.gap_ms:.0f} ms, max_tokens {args.chat_max_tokens}; in bulk blocks the worker held "
              f"{s['inflight_min']}-{s['inflight_max']} bulk tasks (all {s['bulk_slots']} bulk slots in "
              f"{s['busy_share']:.0%} of heartbeats) with {backlog} bulk tasks waiting):", ""]
    rows = [["no bulk", str(s["n_idle"]), *(common.fmt(s["ttft_idle"][q]) for q in (50, 95, 99)), "1.00", "-"],
            ["bulk backlog", str(s["n_bulk"]), *(common.fmt(s["ttft_bulk"][q]) for q in (50, 95, 99)),
             common.fmt(s["ttft_ratio"], 2), f"{ci[0]:.2f}-{ci[1]:.2f}"]]
    lines += [common.table(["", "requests", "p50", "p95", "p99", "p95 ratio", "90% interval"], rows),
              f"p95 ratio by pair: {' '.join(f'{r:.2f}' for r in s['ttft_ratio_by_pair'])}; "
              f"p50 ratio {s['ttft_p50_ratio']:.2f}; heartbeats with more chats in the worker than the "
              f"{s['reserve']} reserved slots: {s['chat_over_reserve'][ps.BULK]:.0%} in bulk blocks", ""]
    lines.append(f"load average (1 min) after each run and block: {s['loadavg_1m'][0]:.1f} to "
                 f"{s['loadavg_1m'][1]:.1f} on {os.cpu_count()} CPUs")
    if s["chat_errors"] or s["bulk_errors"]:
        lines.append(f"WARNING: {s['chat_errors']} chat and {s['bulk_errors']} bulk requests failed")
    if abs(s["mean_tokens"]["engine"] - s["mean_tokens"]["skinflint"]) > 0.5:
        lines.append("WARNING: answers differ in length between the engines (tokens/s still counts real tokens)")
    print("\n".join(lines))
    checks = []
    if s.get("waiting_min") is not None:
        checks.append(("the bulk backlog never ran out during bulk blocks", s["waiting_min"] > 0,
                       f"fewest waiting: {s['waiting_min']}"))
    code = common.print_verdict([*checks,
        (f"chat TTFT p95 with a bulk backlog <= {TTFT_TARGET}x without", s["ttft_ratio"] <= TTFT_TARGET,
         f"{s['ttft_ratio']:.2f}x"),
        (f"bulk tokens/s >= {THROUGHPUT_TARGET:.0%} of the engine's saturated", s["tps_ratio"] >= THROUGHPUT_TARGET,
         f"{s['tps_ratio']:.1%}"),
    ])
    return "\n".join(lines), code


def plot(path: Path, data: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, colour in ((ps.IDLE, "tab:blue"), (ps.BULK, "tab:red")):
        values = sorted(c["ttft_ms"] for b in data["ttft"] if b["kind"] == kind for c in b["calls"] if c["ok"])
        if values:
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], color=colour,
                    label="no bulk" if kind == ps.IDLE else "bulk backlog")
    ax.axhline(0.95, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("time to first token, ms")
    ax.set_ylabel("share of requests")
    ax.set_title("Chat TTFT with and without a bulk backlog")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def place_like_skinflint(engine: targets.VllmServeTarget) -> None:
    """Keep vllm serve's front end (its API server: HTTP, detokenizing) off the core its model
    computes on, as skinflint keeps its worker's front end and its other processes: otherwise,
    on a machine with other load, the baseline loses throughput that skinflint does not."""
    from services.shared import sched

    if engine.process is not None:
        free = sched.keep_off_engine_cpus("vllm serve's front end", [engine.process.pid], owners=[engine.process.pid])
        common.log(f"vllm serve's front end on CPU {sched.cpu_list(free)}" if free else
                   "vllm serve's front end left where it is (its engine is not pinned)")


def start_batch_service(skinflint: targets.SkinflintTarget) -> None:
    """The batch service, as `make run` starts it: it turns a batch's lines into bulk tasks."""
    common.log("starting the batch service")
    proc = skinflint.stack.start_service("batch", "services.batch")
    assert proc.health_port is not None
    skinflint.stack.wait_http(proc.health_port, "/readyz", 60, "the batch service")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.end_on_sigterm()
    out = common.run_dir("priority")
    meta: dict[str, Any] = {"args": vars(args), "started": time.time()}
    data: dict[str, Any] = {}
    settings = targets.EngineSettings(max_num_seqs=args.max_num_seqs)
    engine = targets.VllmServeTarget(out / "vllm", settings)
    skinflint = targets.SkinflintTarget(out / "skinflint", settings)
    skinflint.stack.env["SF_PIPELINE"] = '["infer"]'
    if args.interactive_reserve is not None:
        skinflint.stack.env["SF_INTERACTIVE_RESERVE"] = str(args.interactive_reserve)

    def clean_up(complete: bool) -> None:
        common.log("stopping both engines")
        engine.stop()
        skinflint.stop()
        meta.update(finished=time.time(), complete=complete,
                    engine_config={"vllm": targets.engine_config_from_log(engine.engine_log()),
                                   "skinflint": targets.engine_config_from_log(skinflint.engine_log())})
        common.save_json(out / "results.json", {"meta": meta, **data})

    with common.attempt(clean_up) as outcome:
        common.log("starting vllm serve (about a minute)")
        engine.start()
        place_like_skinflint(engine)
        common.log("starting nats-server, a worker and ingress (about a minute)")
        skinflint.start()
        if args.submit == "batch-api":
            start_batch_service(skinflint)
        asyncio.run(measure(args, engine.base_url, skinflint.base_url, skinflint.stack.nats_url, data))
    common.log(f"raw results: {out / 'results.json'}")
    if not outcome.complete:
        return 1
    summary = summarise(args, data)
    common.save_json(out / "summary.json", summary)
    plot(out / "ttft.png", data)
    print()
    _, code = report(args, summary)
    configs = meta["engine_config"]
    if configs["vllm"] != configs["skinflint"]:
        print(f"WARNING: the engines logged different settings: {configs}")
    return code


if __name__ == "__main__":
    sys.exit(main())
