"""The tables and targets of ``bench/gateway.py``, from what it measured (plain functions)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from functools import partial
from typing import Any

try:  # `python -m bench.gateway` from the repo root
    from bench.cache_common import bootstrap_interval, interval_text
    from bench.common import fmt, percentile, table
    from bench.gateway_load import LoadResult
except ModuleNotFoundError:  # `python bench/gateway.py`: bench/ itself is on the path
    from cache_common import bootstrap_interval, interval_text  # type: ignore[no-redef]
    from common import fmt, percentile, table  # type: ignore[no-redef]
    from gateway_load import LoadResult  # type: ignore[no-redef]

#: Targets of issue 13 on this 2-core machine.
ADDED_P50_MS = 2.0
ADDED_P99_MS = 5.0
MIN_RPS = {"json": 400.0, "stream": 100.0}
MODE_NAMES = {"json": "non-streamed", "stream": "streamed"}
#: Processes in the CPU table, in this order (the load generator is this process's event loop).
PROCESSES = ("ingress", "worker", "nats", "mock", "load generator")
#: CPU the rest of the machine used meanwhile (a busy machine makes every figure worse).
OTHERS = "others"
#: skinflint's phases of the path (``x-skinflint-phases-ms``), in order.
PHASES = ("ingress_in", "to_worker", "worker_in", "worker_out", "to_ingress", "ingress_out")


def brief(result: LoadResult) -> str:
    lat = result.latencies_ms
    text = (f"{result.requests} requests in {result.wall_s:.1f} s, {result.rps:,.0f}/s, "
            f"p50 {fmt(percentile(lat, 50), 3)} ms, p99 {fmt(percentile(lat, 99), 3)} ms")
    if result.errors:
        text += f", {result.errors} ERRORS (e.g. {next(iter(result.reasons))})"
    return text


def saturation_row(result: LoadResult, mode: str, round_no: int, cpu: dict[str, float],
                   upstream_calls: int) -> dict[str, Any]:
    """What one saturation run keeps (not every latency: there may be hundreds of thousands)."""
    lat = result.latencies_ms
    return {"target": result.target, "mode": mode, "round": round_no, "connections": result.connections,
            "wall_s": result.wall_s, "ok": len(lat), "errors": result.errors, "reasons": dict(result.reasons),
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "cpu_s": cpu,
            "upstream_calls": upstream_calls}


# --- one client ----------------------------------------------------------------------------------

def _pooled(slices: Sequence[dict[str, Any]], key: str = "latencies_ms") -> list[float]:
    return [v for s in slices for v in s[key]]


def added(pairs: Sequence[tuple[Sequence[float], Sequence[float]]], q: float) -> float:
    """skinflint's q-th percentile minus the direct one, over (direct, skinflint) slice pairs pooled."""
    direct = [v for d, _ in pairs for v in d]
    through = [v for _, s in pairs for v in s]
    return percentile(through, q) - percentile(direct, q)


def latency_summary(latency: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Per mode: each target's percentiles and what skinflint adds, with 90% intervals from a
    bootstrap over slices (a slice of each target, measured one after the other, is a unit)."""
    out = {}
    for mode, by_target in latency.items():
        pairs = [(d["latencies_ms"], s["latencies_ms"]) for d, s in
                 zip(by_target["direct"], by_target["skinflint"], strict=False)]
        if not pairs:
            continue
        row: dict[str, Any] = {}
        for name, slices in by_target.items():
            lat, first = _pooled(slices), _pooled(slices, "first_byte_ms")
            row[name] = {"n": len(lat), "errors": sum(s["errors"] for s in slices),
                         "p50": percentile(lat, 50), "p99": percentile(lat, 99), "p999": percentile(lat, 99.9),
                         "first_p50": percentile(first, 50)}
        for q in (50, 99):
            row[f"added_p{q}"] = added(pairs, q)
            row[f"added_p{q}_ci"] = bootstrap_interval(pairs, partial(added, q=q))
        row["phases"] = phases(_headers(by_target["skinflint"]))
        out[mode] = row
    return out


def _headers(slices: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    return [h for s in slices for h in s.get("headers", [])]


def phases(headers: Sequence[dict[str, str]]) -> dict[str, tuple[float, float]]:
    """p50 and p99 of skinflint's own time, each phase of it and the upstream call (``engine``)
    from the response headers (non-streamed answers only carry them)."""
    values: dict[str, list[float]] = {}
    for h in headers:
        for name, key in (("in skinflint", "x-skinflint-overhead-ms"), ("upstream call", "x-skinflint-engine-ms")):
            if key in h:
                values.setdefault(name, []).append(float(h[key]))
        for part in filter(None, h.get("x-skinflint-phases-ms", "").split(",")):
            name, _, ms = part.partition("=")
            values.setdefault(name, []).append(float(ms))
    order = ["in skinflint", *PHASES, "upstream call"]
    return {k: (percentile(values[k], 50), percentile(values[k], 99)) for k in order if k in values}


def latency_tables(summary: dict[str, dict[str, Any]]) -> str:
    out = []
    for mode, row in summary.items():
        d, s = row["direct"], row["skinflint"]
        rows = [[name, f"{r['n']:,}", str(r["errors"]), fmt(r["p50"], 3), fmt(r["p99"], 3), fmt(r["p999"], 3),
                 fmt(r["first_p50"], 3), f"{r['p50'] / d['p50']:.1f}x"]
                for name, r in (("direct", d), ("skinflint", s))]
        rows.append(["added", "", "", fmt(row["added_p50"], 3), fmt(row["added_p99"], 3), "", "", ""])
        out.append(f"One client, {MODE_NAMES[mode]} (closed loop, one request at a time; ms)")
        out.append(table(["target", "requests", "errors", "p50", "p99", "p99.9", "1st byte p50", "p50 ratio"], rows))
        if "cpu_share" in row:
            out.append("CPU over these runs, share of one core: " + ", ".join(
                f"{name} {share:.0%}" for name, share in row["cpu_share"].items()))
        out.append(f"added p50 {fmt(row['added_p50'], 3)} ms (90% interval {interval_text(row['added_p50_ci'], 3)}), "
                   f"added p99 {fmt(row['added_p99'], 3)} ms ({interval_text(row['added_p99_ci'], 3)})")
        if row["phases"]:
            out.append("skinflint's own time by phase (x-skinflint-phases-ms; 'upstream call' is the worker's "
                       "HTTP call to the mock, 'in skinflint' the rest):")
            out.append(table(["phase", "p50 ms", "p99 ms"],
                             [[k, fmt(a, 3), fmt(b, 3)] for k, (a, b) in row["phases"].items()]))
        out.append("")
    return "\n".join(out)


# --- saturation ----------------------------------------------------------------------------------

def saturation_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (mode, target): rounds pooled: correct answers per second of wall time, errors, the
    slowest and fastest round, CPU per process as a share of one core and per request."""
    out = []
    keys = sorted({(r["mode"], r["target"]) for r in rows}, key=lambda k: (k[0] != "json", k[1] != "direct"))
    for mode, target in keys:
        runs = [r for r in rows if r["mode"] == mode and r["target"] == target]
        wall, ok = sum(r["wall_s"] for r in runs), sum(r["ok"] for r in runs)
        cpu: dict[str, float] = {}
        for r in runs:
            for name, s in r["cpu_s"].items():
                cpu[name] = cpu.get(name, 0.0) + s
        out.append({"mode": mode, "target": target, "rounds": len(runs), "rps": ok / wall if wall else 0.0,
                    "round_rps": [r["ok"] / r["wall_s"] for r in runs], "errors": sum(r["errors"] for r in runs),
                    "requests": ok, "p50_ms": max(r["p50_ms"] for r in runs), "p99_ms": max(r["p99_ms"] for r in runs),
                    "cpu_share": {n: s / wall for n, s in cpu.items()},
                    "cpu_us": {n: s / ok * 1e6 if ok else math.nan for n, s in cpu.items()},
                    "upstream_per_request": sum(r["upstream_calls"] for r in runs) / ok if ok else math.nan,
                    "connections": runs[0]["connections"]})
    return out


def saturation_tables(summary: Sequence[dict[str, Any]]) -> str:
    direct = {r["mode"]: r["rps"] for r in summary if r["target"] == "direct"}
    rows = []
    for r in summary:
        ratio = r["rps"] / direct[r["mode"]] if direct.get(r["mode"]) else math.nan
        rounds = " / ".join(f"{v:,.0f}" for v in r["round_rps"])
        rows.append([MODE_NAMES[r["mode"]], r["target"], f"{r['rps']:,.0f}", rounds, f"{ratio:.3f}",
                     str(r["errors"]), fmt(r["p50_ms"], 2), fmt(r["p99_ms"], 2),
                     fmt(r["upstream_per_request"], 2)])
    conns = summary[0]["connections"] if summary else 0
    out = [f"Saturation: {conns} clients, closed loop (req/s of correct answers; p50/p99 in ms, the worst round's)",
           table(["mode", "target", "req/s", "each round", "vs direct", "errors", "p50", "p99", "mock calls/req"],
                 rows), "",
           "CPU at saturation, by process: share of one core (of 2) / µs per answered request"]
    cpu_rows = []
    for r in summary:
        shares, per = r["cpu_share"], r["cpu_us"]
        cells = [f"{shares[p]:.0%} / {per[p]:,.0f}" if p in shares else "-" for p in PROCESSES]
        total = sum(v for k, v in shares.items() if k != OTHERS)
        total_us = sum(v for k, v in per.items() if k != OTHERS)
        cpu_rows.append([MODE_NAMES[r["mode"]], r["target"], *cells, f"{total:.0%} / {total_us:,.0f}",
                         f"{shares.get(OTHERS, math.nan):.0%}"])
    out.append(table(["mode", "target", *PROCESSES, "all of these", "rest of the machine"], cpu_rows))
    return "\n".join(out)


# --- the whole report ----------------------------------------------------------------------------

def report(latency: dict[str, dict[str, list[dict[str, Any]]]], saturation: Sequence[dict[str, Any]],
           args: argparse.Namespace, one_client_cpu: dict[str, dict[str, float]] | None = None,
           ) -> tuple[str, list[tuple[str, bool, str]]]:
    """The printed tables, and the targets as (name, met, figure)."""
    lat = latency_summary(latency)
    for mode, shares in (one_client_cpu or {}).items():
        if mode in lat:
            lat[mode]["cpu_share"] = shares
    sat = saturation_summary(saturation)
    text = "\n".join([
        "skinflint: ingress -> NATS -> one upstream worker -> the mock; pipeline ['infer'] (no cache, no "
        "classifier); accounting service off (usage events wait in JetStream)",
        f"mock: zero latency, {args.chunks} chunks per streamed answer; the load generator checks every answer",
        *([f"skinflint's environment set for this run: {' '.join(args.service_env)}"]
          if getattr(args, "service_env", None) else []),
        "", latency_tables(lat), saturation_tables(sat)])
    checks: list[tuple[str, bool, str]] = []
    for mode, row in lat.items():
        name = MODE_NAMES[mode]
        checks.append((f"added p50 at one client, {name} <= {ADDED_P50_MS:g} ms",
                       row["added_p50"] <= ADDED_P50_MS, f"{row['added_p50']:.3f} ms"))
        checks.append((f"added p99 at one client, {name} <= {ADDED_P99_MS:g} ms",
                       row["added_p99"] <= ADDED_P99_MS, f"{row['added_p99']:.3f} ms"))
    for r in sat:
        if r["target"] == "skinflint":
            goal = MIN_RPS[r["mode"]]
            checks.append((f"saturated req/s, {MODE_NAMES[r['mode']]} >= {goal:g}", r["rps"] >= goal,
                           f"{r['rps']:,.0f}/s"))
    errors = sum(r["errors"] for r in sat) + sum(t["errors"] for row in lat.values()
                                                 for t in (row["direct"], row["skinflint"]))
    checks.append(("no errors", errors == 0, f"{errors} errors"))
    return text, checks
