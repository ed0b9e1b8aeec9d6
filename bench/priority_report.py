"""The priority bench's summary of a saved run, its printed report and verdict, and its plot.

``summarise`` takes the raw results (``results.json`` as ``bench/priority.py`` saves it), so a run
can be summarised again later.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

try:  # `python -m bench.priority` from the repo root
    from bench import common
    from bench import priority_stats as ps
except ModuleNotFoundError:  # `python bench/priority.py`: bench/ itself is on the path
    import common  # type: ignore[no-redef]
    import priority_stats as ps  # type: ignore[no-redef]

TTFT_TARGET = 1.5
THROUGHPUT_TARGET = 0.80
#: A throughput run measures the worker only if its bulk slots were full: a heartbeat a second,
#: and one may fall between an answer's end and the next task's pull.
SLOTS_BUSY_TARGET = 0.80
#: The baseline's second run of each round: the engine with as many requests at once as the
#: worker has bulk slots (information: what the reserve for chat costs bulk).
ENGINE_AT_BULK = "engine-at-bulk"


def worker_reserve(args: argparse.Namespace) -> int:
    if args.interactive_reserve is not None:
        return int(args.interactive_reserve)
    from services.worker.settings import WorkerSettings

    return int(WorkerSettings.model_fields["interactive_reserve"].default)


def bulk_slots(args: argparse.Namespace) -> int:
    """The worker's bulk slots: its engine's, less the reserve for chat."""
    return int(args.max_num_seqs) - worker_reserve(args)


def summarise(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    runs = data["throughput"]
    rounds = []
    for r in range(args.rounds):
        mine = {run["who"]: ps.Rate(**run["rate"]) for run in runs if run["round"] == r}
        rounds.append((mine["skinflint"], mine["engine"]))
    slots = bulk_slots(args)
    blocks = data["ttft"]
    pairs: list[ps.BlockPair] = []
    for p in range(args.pairs):
        by_kind = {b["kind"]: [c["ttft_ms"] for c in b["calls"] if c["ok"]] for b in blocks if b["pair"] == p}
        pairs.append((by_kind[ps.IDLE], by_kind[ps.BULK]))
    idle = [v for a, _ in pairs for v in a]
    bulk = [v for _, b in pairs for v in b]
    inflight = [n for b in blocks if b["kind"] == ps.BULK for n in b["inflight_bulk"]]
    tp_inflight = [n for run in runs if run["who"] == "skinflint" for n in run.get("inflight_bulk", [])]
    tokens = {who: [t for run in runs if run["who"] == who for t in run["completion_tokens"]]
              for who in ("engine", "skinflint")}
    return {
        "engine_tps": ps.pooled_rate([e for _, e in rounds]), "skinflint_tps": ps.pooled_rate([s for s, _ in rounds]),
        "tps_by_round": [(s.per_s, e.per_s) for s, e in rounds],
        "engine_at_bulk_tps": ps.pooled_rate([ps.Rate(**r["rate"]) for r in runs if r["who"] == ENGINE_AT_BULK]),
        "engine_at_bulk_by_round": [ps.Rate(**r["rate"]).per_s for r in runs if r["who"] == ENGINE_AT_BULK],
        "tps_ratio": ps.throughput_ratio(rounds), "tps_ratio_ci": ps.throughput_interval(rounds, args.seed),
        "ttft_idle": {q: common.percentile(idle, q) for q in (50, 95, 99)},
        "ttft_bulk": {q: common.percentile(bulk, q) for q in (50, 95, 99)},
        "ttft_ratio": ps.ttft_ratio(pairs), "ttft_ratio_ci": ps.ttft_interval(pairs, seed=args.seed),
        "ttft_ratio_by_pair": [ps.ttft_ratio([p]) for p in pairs],
        "ttft_p50_ratio": ps.ttft_ratio(pairs, 50),
        "n_idle": len(idle), "n_bulk": len(bulk),
        "chat_errors": sum(1 for b in blocks for c in b["calls"] if not c["ok"]),
        "bulk_errors": sum(run["errors"] for run in runs),
        "bulk_slots": slots, "busy_share": ps.busy_share(inflight, slots),
        # The worker's bulk tasks in flight in the throughput runs' steady windows: the submission
        # path kept every bulk slot busy if they sat at the limit.
        "tp_busy_share": ps.busy_share(tp_inflight, slots),
        "tp_inflight_min": min(tp_inflight, default=0), "tp_inflight_max": max(tp_inflight, default=0),
        "inflight_min": min(inflight, default=0), "inflight_max": max(inflight, default=0),
        # The backlog in SF_BULK, sampled while the chats ran: never empty, or the bulk blocks did
        # not have bulk work to run.
        "waiting_min": min((n for b in blocks if b["kind"] == ps.BULK for n in b.get("bulk_waiting", [])),
                           default=None),
        "reserve": args.max_num_seqs - slots,
        # Chats beyond the reserve wait in vLLM's queue for a running bulk answer to end.
        "chat_over_reserve": {kind: ps.busy_share([i for b in blocks if b["kind"] == kind
                                                   for i in b.get("inflight_interactive", [])],
                                                  args.max_num_seqs - slots + 1)
                              for kind in (ps.IDLE, ps.BULK)},
        "loadavg_1m": [min((r.get("loadavg_1m", math.nan) for r in [*runs, *blocks]), default=math.nan),
                       max((r.get("loadavg_1m", math.nan) for r in [*runs, *blocks]), default=math.nan)],
        "mean_tokens": {who: sum(v) / len(v) if v else 0.0 for who, v in tokens.items()},
    }


def report(args: argparse.Namespace, s: dict[str, Any]) -> tuple[str, int]:
    ci = s["tps_ratio_ci"]
    lines = [f"Bulk output tokens/s, no chat (steady window; {args.rounds} rounds x {args.bulk_requests} requests, "
             f"max_tokens {args.max_tokens}, {args.max_num_seqs} engine slots, {s['bulk_slots']} bulk slots):", ""]
    rows = [[f"engine alone (AsyncLLM, {args.max_num_seqs} at once)", common.fmt(s["engine_tps"]), "1.00", "-",
             " ".join(common.fmt(e) for _, e in s["tps_by_round"]), common.fmt(s["mean_tokens"]["engine"])],
            *([[f"engine alone, {s['bulk_slots']} at once (information)", common.fmt(s["engine_at_bulk_tps"]),
                common.fmt(s["engine_at_bulk_tps"] / s["engine_tps"], 3), "-",
                " ".join(common.fmt(x) for x in s["engine_at_bulk_by_round"]), "-"]]
              if s.get("engine_at_bulk_by_round") else []),
            [f"skinflint bulk (worker, {args.submit})", common.fmt(s["skinflint_tps"]), common.fmt(s["tps_ratio"], 3),
             f"{ci[0]:.3f}-{ci[1]:.3f}", " ".join(common.fmt(x) for x, _ in s["tps_by_round"]),
             common.fmt(s["mean_tokens"]["skinflint"])]]
    lines += [common.table(["", "tokens/s", "ratio", "90% interval", "by round", "tokens/answer"], rows),
              f"worker's bulk tasks in flight in the steady windows: {s['tp_inflight_min']}-{s['tp_inflight_max']} "
              f"(all {s['bulk_slots']} bulk slots in {s['tp_busy_share']:.0%} of heartbeats)", ""]
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
    if not math.isnan(s.get("tp_busy_share", math.nan)):
        checks.append((f"bulk submission kept all bulk slots busy in >= {SLOTS_BUSY_TARGET:.0%} of the steady "
                       "windows' heartbeats", s["tp_busy_share"] >= SLOTS_BUSY_TARGET, f"{s['tp_busy_share']:.0%}"))
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

