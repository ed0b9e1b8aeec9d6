"""What a ShareGPT replay (``replay_sharegpt.py``) measured: its pairs analysed, and the report.

Every prompt's pair of replies (with the cache, without) is summarised: hits by kind, model calls,
the exact repeats in the data against the exact hits served, the accounting ledger's dollars. Every
semantic hit is traced back to the stored question whose answer it got (the stored question whose
embedding has the cosine the response reported, found in the cache's own index after the run) and
put through the independent, stricter check of ``bench/sharegpt.py``. The report prints the tables,
examples and checks; ``report_saved`` prints them again from an earlier run's results.json.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from contracts.v1 import ChatRequest
from services.shared.canonical import exact_key, last_user_text, partition_key

try:  # `python -m bench.replay_sharegpt` from the repo root
    from bench import cache_common as cc
    from bench import common, sharegpt
except ModuleNotFoundError:  # `python bench/replay_sharegpt.py`: bench/ itself is on the path
    import cache_common as cc  # type: ignore[no-redef]
    import common  # type: ignore[no-redef]
    import sharegpt  # type: ignore[no-redef]

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
    return common.print_verdict(checks, label="check", failed="BROKEN", passed="the cache works on real traffic",
                                fails="BROKEN")


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
