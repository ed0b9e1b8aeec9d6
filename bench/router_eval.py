"""The learned router against a random router and a length heuristic, on the held-out split,
on two mixes of the same rows.

Data: the test split of `.models/router-data` (`make install` builds it and trains
`.models/router.json` on the train split; see services/classifier/dataset.py for what the labels
stand for: expected quality per kind of prompt, not judged answers). Each router scores every
test prompt (the learned one through `LearnedPolicy.score_many`, with the query embedding), and
services/classifier/metrics.py turns the scores into RouteLLM's figures: APGR, CPT(50%), CPT(80%),
and the share of strong calls (and price against all-strong) at 95% of the strong tier's quality.
Beside them: the learned policy without the embedding (its fallback), and the oracle, which
routes by each row's true gain: the ceiling of the data, which no router can pass.

Two mixes (services/classifier/mix.py), the same rows, no row dropped and no label changed:
- traffic: the rows re-weighted so that kinds of prompt have production-like shares (chat 70%,
  knowledge 10%, math 10%, code 7%, science 3%; a choice fixed before measuring, stated there).
  What a deployed router sees; the targets are judged on it.
- benchmark: the rows as built, about half hard benchmark items; ~55% of the rows gain from the
  strong tier, so its ceiling is ~0.72 and no router can reach APGR 0.75 on it. Printed beside.

How sure the differences are: a paired bootstrap over the test prompts' groups (1,000 draws;
near copies resampled together; the traffic weights recomputed on each draw so the mix holds)
gives a 90% interval of learned APGR minus each baseline's, on each mix.

Latency: `LearnedPolicy.score` called one query at a time, with its embedding supplied, on the
test prompts in a shuffled order (20,000 calls, one process, after 1,000 warm-up calls):
p50/p99 per decision and decisions per second.

Also printed, not a target: the share of ShareGPT opening prompts that the data set left out
(long or technical: code, maths, jargon) that the learned policy sends to the strong tier at its
default threshold, a look at prompts unlike any it was trained on.

Targets (issue 13), on the traffic mix: APGR >= 0.75 and clearly above both baselines, which
here means: the 90% interval of the difference lies above 0 and its middle is at least 0.02 (a
gap a reader can see in the table and that sampling does not explain; set when the benchmark
mix's ceiling, ~0.72, ruled out the +0.1 first suggested); decision p99 <= 5 ms with the
embedding supplied; >= 500 decisions/s. A PNG of the curves (a panel per mix) and results.json
go to var/bench/router-eval-<time>/. Exit 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.cache.embedding import DEFAULT_MODEL_DIR
from services.classifier import metrics, sources
from services.classifier.dataset import DEFAULT_DATA, Row, read_many
from services.classifier.embeddings import embed_prompts
from services.classifier.evaluate import Report, all_scores, evaluate, knob, plot, queries, select
from services.classifier.features import Query
from services.classifier.learned import DEFAULT_ARTIFACT, ArtifactError, LearnedPolicy
from services.classifier.mix import MIXES, TRAFFIC, Mix, weights_for
from services.classifier.training import embedding_cache

try:  # `python -m bench.router_eval` from the repo root
    from bench import common
except ModuleNotFoundError:  # `python bench/router_eval.py`: bench/ itself is on the path
    import common  # type: ignore[no-redef]

MIN_APGR = 0.75
MIN_MARGIN = 0.02
MAX_P99_MS = 5.0
MIN_DECISIONS_PER_S = 500.0
BASELINES = ("random", "length")
JUDGED = TRAFFIC.name  # the mix the targets are judged on
Margins = dict[str, tuple[float, float, float]]


def bootstrap_margins(rows: Sequence[Row], scores: dict[str, npt.NDArray[np.float64]], mixes: Sequence[Mix],
                      draws: int = 1000, seed: int = 0) -> dict[str, Margins]:
    """Per mix: (5th percentile, median, 95th percentile) of learned APGR minus each baseline's,
    resampling the rows' groups with replacement (the same draws for every mix); a mix's weights
    are recomputed on each draw, so its shares hold whatever the draw."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.fold_key, []).append(i)
    members = list(groups.values())
    weak, strong = np.array([r.weak for r in rows]), np.array([r.strong for r in rows])
    kinds = {m.name: m.kinds(rows) for m in mixes if m.shares is not None}
    rng = np.random.default_rng(seed)
    diffs: dict[str, dict[str, list[float]]] = {m.name: {b: [] for b in BASELINES} for m in mixes}
    for _ in range(draws):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        for m in mixes:
            w = None if m.shares is None else weights_for(kinds[m.name][idx], m.shares)
            apgr = {r: metrics.apgr(metrics.curve(scores[r][idx], weak[idx], strong[idx], w))
                    for r in ("learned", *BASELINES)}
            for b in BASELINES:
                diffs[m.name][b].append(apgr["learned"] - apgr[b])
    return {m: {b: tuple(float(np.percentile(d, q)) for q in (5, 50, 95)) for b, d in by_b.items()}  # type: ignore[misc]
            for m, by_b in diffs.items()}


def decision_latency(policy: LearnedPolicy, qs: Sequence[Query], calls: int, warmup: int = 1000) -> dict[str, float]:
    """Microseconds per :meth:`LearnedPolicy.score`, one query at a time, and decisions/s."""
    order = [qs[i % len(qs)] for i in range(calls)]
    random.Random(0).shuffle(order)
    for q in order[:warmup]:
        policy.score(q)
    times = []
    started = time.perf_counter()
    for q in order:
        t0 = time.perf_counter_ns()
        policy.score(q)
        times.append((time.perf_counter_ns() - t0) / 1000)
    elapsed = time.perf_counter() - started
    return {"p50_us": common.percentile(times, 50), "p99_us": common.percentile(times, 99),
            "max_us": max(times), "decisions_per_s": calls / elapsed, "calls": calls}


def left_out_sharegpt(policy: LearnedPolicy, embedder: Path, cache: Path | None, limit: int) -> dict[str, float]:
    """Share of left-out ShareGPT openings (not simple) the policy sends strong at its default threshold."""
    texts = sorted({t for _, t in sources.sharegpt_openings() if sources.simple_category(t) is None},
                   key=sources.short_hash)[:limit]
    emb = embed_prompts(texts, embedder_dir=embedder, cache=cache)
    scores = policy.score_many([Query.single(t, e) for t, e in zip(texts, emb, strict=True)])
    has_code = np.array(["```" in t or "def " in t or "{" in t for t in texts])
    strong = scores >= policy.default_threshold
    return {"prompts": len(texts), "sent_strong": float(strong.mean()),
            "with_code": int(has_code.sum()), "with_code_sent_strong": float(strong[has_code].mean())
            if has_code.any() else float("nan")}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", default=[DEFAULT_DATA])
    parser.add_argument("--router", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--embedder", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--calls", type=int, default=20_000, help="decisions timed")
    parser.add_argument("--draws", type=int, default=1000, help="bootstrap draws")
    parser.add_argument("--left-out", type=int, default=500, help="left-out ShareGPT prompts looked at (0: none)")
    return parser.parse_args(argv)


def gain_bands(rows: Sequence[Row], weights: npt.NDArray[np.float64]) -> tuple[float, float]:
    """(Weighted) shares of the calls that gain much (>= 0.5) and a little (0..0.5) from the strong
    tier: what bounds the oracle's APGR (a perfect router still has to send all of them strong)."""
    gain = np.array([r.gain for r in rows])
    total = weights.sum()
    return float(weights @ (gain >= 0.5) / total), float(weights @ ((gain > 0) & (gain < 0.5)) / total)


def why_ceiling(rows: Sequence[Row], weights: npt.NDArray[np.float64]) -> str:
    much, little = gain_bands(rows, weights)
    return (f"{100 * much:.0f}% of the calls gain >= 0.5 from the strong tier, {100 * little:.0f}% gain a little "
            "(less than 0.5)")


def print_mix(name: str, rows: Sequence[Row], reports: dict[str, Report], weights: npt.NDArray[np.float64]) -> None:
    ceiling, c = reports["oracle (ceiling)"], reports["learned"].curve
    print(f"\n== {name} mix, held-out split ({len(rows)} prompts; {MIXES[name].description}) ==")
    print(f"quality weak {c.q_weak:.3f}, strong {c.q_strong:.3f}; {why_ceiling(rows, weights)}")
    print(common.table(
        ["router", "APGR", "of ceiling", "CPT(50%)", "CPT(80%)", "strong calls at 95%", "cost vs all-strong"],
        [[r.name, f"{r.apgr:.3f}", f"{(r.apgr - 0.5) / (ceiling.apgr - 0.5):.0%}", f"{100 * r.cpt50:.1f}%",
          f"{100 * r.cpt80:.1f}%", f"{100 * r.at_target.share:.1f}%", f"{100 * r.at_target.cost_vs_strong:.1f}%"]
         for r in reports.values()]))


def print_margins(reports: dict[str, dict[str, Report]], margins: dict[str, Margins]) -> None:
    print("\n== learned against the baselines ==")
    rows = []
    for m, by_router in reports.items():
        learned = by_router["learned"]
        rows += [[m, b, f"{learned.apgr / by_router[b].apgr:.3f}", f"{learned.apgr - by_router[b].apgr:+.3f}",
                  f"{margins[m][b][0]:+.3f} .. {margins[m][b][2]:+.3f}", f"{learned.cpt50 / by_router[b].cpt50:.3f}",
                  f"{learned.at_target.share / by_router[b].at_target.share:.3f}"] for b in BASELINES]
    print(common.table(["mix", "baseline", "APGR ratio", "APGR difference", "90% interval", "CPT(50%) ratio",
                        "strong calls at 95% ratio"], rows))


def verdict(reports: dict[str, Report], margins: Margins, latency: dict[str, float]) -> list[str]:
    """The targets missed, judged on the traffic mix (``reports``, ``margins``: that mix's)."""
    learned, ceiling = reports["learned"], reports["oracle (ceiling)"]
    problems = []
    if learned.apgr < MIN_APGR:
        problems.append(f"{JUDGED} APGR {learned.apgr:.3f} < {MIN_APGR} (its ceiling is {ceiling.apgr:.3f})")
    for b in BASELINES:
        low, mid, _ = margins[b]
        if low <= 0 or mid < MIN_MARGIN:
            problems.append(f"not clearly above {b} on the {JUDGED} mix: {mid:+.3f} (90% interval from {low:+.3f})")
    if latency["p99_us"] > 1000 * MAX_P99_MS:
        problems.append(f"decision p99 {latency['p99_us'] / 1000:.2f} ms > {MAX_P99_MS} ms")
    if latency["decisions_per_s"] < MIN_DECISIONS_PER_S:
        problems.append(f"{latency['decisions_per_s']:.0f} decisions/s < {MIN_DECISIONS_PER_S:.0f}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        policy = LearnedPolicy.load(args.router)
    except ArtifactError as e:
        raise SystemExit(str(e)) from None
    out = common.run_dir("router-eval")
    all_rows, digest = read_many(args.data)
    rows = select(all_rows, "test")
    if digest != policy.trained_on.get("sha256"):
        common.log("note: the router was trained on other data than this (its sha256 differs)")
    cache = embedding_cache(args.data)
    common.log(f"{len(rows)} test prompts; embedding them (cached in {cache})")
    emb = embed_prompts([r.prompt for r in rows], embedder_dir=args.embedder, cache=cache)
    scores = all_scores(policy, rows, emb)
    mixes = list(MIXES.values())  # traffic first: the one judged
    weights = {m.name: m.weights(rows) for m in mixes}
    reports = {m: {r.name: r for r in evaluate(rows, scores, weights=w)} for m, w in weights.items()}
    margins = bootstrap_margins(rows, scores, mixes, draws=args.draws)
    latency = decision_latency(policy, queries(rows, emb), args.calls)
    knobs = {m: knob(rows, scores["learned"], policy.default_threshold, 0.95, w) for m, w in weights.items()}
    left_out = left_out_sharegpt(policy, args.embedder, cache, args.left_out) if args.left_out else {}

    for m in weights:
        print_mix(m, rows, reports[m], weights[m])
    print("('of ceiling': APGR above random's 0.5, as a share of the oracle's; cost: a strong call = 50 weak ones)")
    print_margins(reports, margins)
    bench = reports["benchmark"]["oracle (ceiling)"]
    print(f"\nthe benchmark mix's ceiling is {bench.apgr:.3f}, so no router reaches {MIN_APGR} there: half its rows "
          f"are hard benchmark items by construction ({why_ceiling(rows, weights['benchmark'])}; every row of a kind "
          f"labelled alike), and even the oracle needs {100 * bench.at_target.share:.0f}% strong calls for 95% of "
          f"the strong tier's quality. The targets are judged on the {JUDGED} mix, the traffic a router is deployed on")
    print(f"default threshold {policy.default_threshold:.3f} (calibrated on the "
          f"{policy.trained_on.get('threshold_mix', 'benchmark')} mix at training): " + "; ".join(
              f"{m} mix {100 * k['default_share']:.1f}% strong calls, {100 * k['default_of_strong']:.1f}% of the "
              "strong tier's quality" for m, k in knobs.items()))
    print(f"LearnedPolicy.score with the embedding: p50 {latency['p50_us']:.0f} us, p99 {latency['p99_us']:.0f} us, "
          f"max {latency['max_us']:.0f} us; {latency['decisions_per_s']:,.0f} decisions/s ({latency['calls']:,} calls)")
    if left_out:
        print(f"ShareGPT openings left out of the data (long or technical), {left_out['prompts']}: "
              f"{100 * left_out['sent_strong']:.0f}% sent strong; of the {left_out['with_code']} with code, "
              f"{100 * left_out['with_code_sent_strong']:.0f}%")

    plot(out / "cost-quality.png", {m: list(r.values()) for m, r in reports.items()},
         title=f"routers on the held-out split ({len(rows)} prompts)")
    results: dict[str, Any] = {
        "rows": len(rows), "router": str(args.router), "trained_on": policy.trained_on, "judged_on": JUDGED,
        "reports": {m: {n: {"apgr": r.apgr, "cpt50": r.cpt50, "cpt80": r.cpt80, "share_at_95": r.at_target.share,
                            "cost_vs_strong_at_95": r.at_target.cost_vs_strong} for n, r in by.items()}
                    for m, by in reports.items()},
        "margins_90": margins, "latency": latency, "threshold": knobs, "left_out_sharegpt": left_out,
    }
    common.save_json(out / "results.json", results)
    print(f"plot and raw figures: {out}")

    problems = verdict(reports[JUDGED], margins[JUDGED], latency)
    if problems:
        print("VERDICT: FAIL - " + "; ".join(problems))
        return 1
    learned = reports[JUDGED]["learned"]
    print(f"VERDICT: PASS - {JUDGED} mix APGR {learned.apgr:.3f}, clearly above random and length; p99 "
          f"{latency['p99_us']:.0f} us; {latency['decisions_per_s']:,.0f} decisions/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
