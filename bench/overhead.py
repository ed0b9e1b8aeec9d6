"""What skinflint adds to latency: the same model behind skinflint and behind `vllm serve`.

Both engines run with the same vLLM settings (see ``EngineSettings``). Load is never sent to both
at once: this machine has two cores, so the engine not being measured must be idle.

How the engines take turns (``--engines-up``):
  both  Both stay up for the whole run (about 5 GiB each) and every cell is measured on one and
        then the other, swapping who goes first from cell to cell and round to round, so both see
        the same slow drift of a noisy machine. The idle engine's CPU use is measured to show that
        it really is idle.
  one   One engine at a time: each round starts skinflint, measures every cell, stops it, then
        does the same with `vllm serve` (the order swaps each round). Needs half the memory but
        the two engines are minutes apart, and every round pays two start-ups.
  auto  ``both`` when MemAvailable allows it, else ``one`` (the default).

Cells: concurrency 1, 8 and 32 clients x max_tokens 1 and 64; non-streaming chat completions at
temperature 0 over a fixed prompt set. Printed: p50 and p99 latency for both, the ratios
skinflint / vLLM, and skinflint's own time outside the engine (``x-skinflint-overhead-ms``).
Raw results go to var/bench/overhead-<time>/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

try:  # `python -m bench.overhead` from the repo root
    from bench import common, targets
except ModuleNotFoundError:  # `python bench/overhead.py`: bench/ itself is on the path
    import common  # type: ignore[no-redef]
    import targets  # type: ignore[no-redef]

Target = targets.SkinflintTarget | targets.VllmServeTarget
Cell = tuple[int, int]  # (concurrency, max_tokens)

CONCURRENCIES = (1, 8, 32)
MAX_TOKENS = (1, 64)
# Requests per cell and round. A p99 means little below ~100 samples (pooled over the rounds), and
# over a few hundred it still rests on the handful of slowest requests, so the cheap one-token cells
# get many more; the c=1 x 64-token cell costs ~1-2 s a request per engine.
REQUESTS: dict[Cell, int] = {(1, 1): 200, (1, 64): 30, (8, 1): 192, (8, 64): 48, (32, 1): 384, (32, 64): 96}
QUICK_REQUESTS: dict[Cell, int] = {(1, 1): 4, (1, 64): 4, (8, 1): 8, (8, 64): 8, (32, 1): 32, (32, 64): 32}
#: With both engines up, each round of a cell is measured in up to this many slices, alternating.
PARTS = 4
P99_RATIO_TARGET = 1.10
OVERHEAD_P99_TARGET_MS = 5.0
BOTH_UP_MIN_GIB = 14.0  # two engines at ~5 GiB each, and room left for the rest of the machine
# vLLM's worker keeps busy-polling its shared-memory queue for 1 s after its last step
# (SpinCondition in shm_broadcast.py): wait that out so the engine measured before is idle.
SETTLE_S = 1.5
# The p99 ratio's uncertainty: a bootstrap over the slices, each drawn with both engines' requests.
BOOTSTRAP_DRAWS = 1000
INTERVAL = 90  # percent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Latency through skinflint against vLLM's own OpenAI server (same model and settings).",
        epilog="A full run takes about 25-45 minutes on 2 cores; --quick about 5.")
    parser.add_argument("--rounds", type=int, default=None,
                        help="repetitions of every cell per engine (default 6; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="few requests per cell, one round: a smoke run")
    parser.add_argument("--engines-up", choices=("auto", "both", "one"), default="auto",
                        help="keep both engines up and alternate per cell, or one engine at a time per "
                             f"round; auto picks 'both' with at least {BOTH_UP_MIN_GIB:.0f} GiB available")
    parser.add_argument("--max-num-seqs", type=int, default=32, help="engine slots, on both (default 32)")
    parser.add_argument("--start-timeout", type=float, default=600, help="seconds an engine may take to start")
    parser.add_argument("--report", type=Path, metavar="RESULTS_JSON",
                        help="measure nothing: print the tables of an earlier run from its results.json")
    args = parser.parse_args(argv)
    if args.rounds is None:
        # Six: with three, most p99 ratios on a noisy 2-core VM had intervals holding the target.
        args.rounds = 1 if args.quick else 6
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


class OverheadBench:
    """Runs the cells on both targets and keeps every call, then summarises."""

    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args = args
        self.out = out
        self.settings = targets.EngineSettings(max_num_seqs=args.max_num_seqs)
        self.targets: list[Target] = [targets.SkinflintTarget(out / "skinflint", self.settings),
                                      targets.VllmServeTarget(out / "vllm", self.settings)]
        self.cells: list[Cell] = [(c, m) for c in CONCURRENCIES for m in MAX_TOKENS]
        self.requests = QUICK_REQUESTS if args.quick else REQUESTS
        self.runs: list[dict[str, Any]] = []
        self.idle_cpu_s: dict[str, float] = defaultdict(float)
        self.idle_wall_s: dict[str, float] = defaultdict(float)
        self.meta: dict[str, Any] = {"args": vars(args), "settings": vars(self.settings), "started": time.time(),
                                     "loadavg_start": list(os.getloadavg()), "engine_starts": []}

    # --- engines -------------------------------------------------------------------------------
    def start(self, target: Target) -> None:
        common.log(f"starting {target.name} (about a minute)")
        t0 = time.monotonic()
        target.start(self.args.start_timeout)
        _, rss = targets.session_usage(target.sessions())
        took = time.monotonic() - t0
        self.meta["engine_starts"].append({"engine": target.name, "seconds": took, "rss_gib": rss / 1024**3})
        common.log(f"{target.name} is up at {target.base_url} after {took:.0f} s, {rss / 1024**3:.1f} GiB resident")

    def stop_all(self) -> None:
        for target in self.targets:
            target.stop()

    # --- measuring -----------------------------------------------------------------------------
    def warm_up(self, runner: asyncio.Runner, client: httpx.AsyncClient, target: Target) -> None:
        """Every cell shape a few times: first-request costs (connections, kernels) stay out."""
        t0 = time.monotonic()
        for concurrency, max_tokens in self.cells:
            runner.run(common.run_load(client, target.base_url, concurrency, max(4, concurrency), max_tokens))
        common.log(f"{target.name} warmed up in {time.monotonic() - t0:.0f} s")

    def measure(self, runner: asyncio.Runner, client: httpx.AsyncClient, target: Target, cell: Cell,
                round_no: int, part: range | None = None) -> None:
        """One round of ``cell`` on ``target``, or the requests ``part`` of it."""
        target.check_alive()
        time.sleep(SETTLE_S)
        idle = [t for t in self.targets if t is not target and t.sessions()]
        before = {t.name: targets.session_usage(t.sessions())[0] for t in idle}
        concurrency, max_tokens = cell
        if part is None:
            part = range(self.requests[cell])
        result = runner.run(common.run_load(client, target.base_url, concurrency, len(part), max_tokens,
                                            first_index=part.start))
        for t in idle:
            self.idle_cpu_s[t.name] += targets.session_usage(t.sessions())[0] - before[t.name]
            self.idle_wall_s[t.name] += result.wall_s
        self.runs.append({"engine": target.name, "round": round_no, **result.as_dict()})
        self._progress(target.name, round_no, result)

    def _progress(self, name: str, round_no: int, result: common.LoadResult) -> None:
        lat = [c.latency_ms for c in result.ok_calls]
        over = [c.overhead_ms for c in result.ok_calls if c.overhead_ms is not None]
        extra = f", in-skinflint p50 {common.fmt(common.percentile(over, 50), 2)} ms" if over else ""
        errors = result.errors
        if errors:
            extra += f", {len(errors)} ERRORS (first: {errors[0].status} {errors[0].error})"
        p50, p99 = common.fmt(common.percentile(lat, 50)), common.fmt(common.percentile(lat, 99))
        common.log(f"round {round_no + 1}/{self.args.rounds} {name:>9} c={result.concurrency:<2} "
                   f"max_tokens={result.max_tokens:<2}: {len(result.calls)} requests in {result.wall_s:5.1f} s, "
                   f"p50 {p50} ms, p99 {p99} ms, {result.output_tokens} output tokens{extra}")

    def run(self) -> None:
        mode = self.args.engines_up
        available = common.mem_available_gib()
        if mode == "auto":
            mode = "both" if available >= BOTH_UP_MIN_GIB else "one"
        self.meta["engines_up"] = mode
        self.meta["mem_available_gib"] = available
        common.log(f"engines up: {mode} ({available:.1f} GiB available); {self.args.rounds} round(s), "
                   f"cells {self.cells}, requests per cell {self.requests}")
        with asyncio.Runner() as runner:
            client = common.make_client()
            try:
                if mode == "both":
                    self._run_both_up(runner, client)
                else:
                    self._run_one_at_a_time(runner, client)
            finally:
                runner.run(client.aclose())

    def _run_both_up(self, runner: asyncio.Runner, client: httpx.AsyncClient) -> None:
        for target in self.targets:
            self.start(target)
        for target in self.targets:
            self.warm_up(runner, client, target)
        for round_no in range(self.args.rounds):
            for k, cell in enumerate(self.cells):
                for j, part in enumerate(self.parts(cell)):
                    order = self.targets if (round_no + k + j) % 2 == 0 else self.targets[::-1]
                    for target in order:
                        self.measure(runner, client, target, cell, round_no, part)

    def parts(self, cell: Cell) -> list[range]:
        """A round of a cell in up to PARTS slices, measured on the two engines in turn, so that a
        disturbance of the machine lasting seconds falls on both alike. A slice keeps at least
        three requests per client, so that the load stays at the cell's concurrency most of the time."""
        concurrency, _ = cell
        total = self.requests[cell]
        n = max(1, min(PARTS, total // (3 * concurrency)))
        bounds = [total * i // n for i in range(n + 1)]
        return [range(a, b) for a, b in itertools.pairwise(bounds)]

    def _run_one_at_a_time(self, runner: asyncio.Runner, client: httpx.AsyncClient) -> None:
        for round_no in range(self.args.rounds):
            for target in self.targets if round_no % 2 == 0 else self.targets[::-1]:
                self.start(target)
                try:
                    self.warm_up(runner, client, target)
                    for cell in self.cells:
                        self.measure(runner, client, target, cell, round_no)
                finally:
                    target.stop()

    # --- results -------------------------------------------------------------------------------
    def calls(self, engine: str, cell: Cell, round_no: int | None = None) -> list[common.Call]:
        found = []
        for run in self.runs:
            if run["engine"] == engine and (run["concurrency"], run["max_tokens"]) == cell and (
                    round_no is None or run["round"] == round_no):
                found += [common.Call(**c) for c in run["calls"]]
        return found

    def summary(self) -> list[dict[str, Any]]:
        rows = []
        for cell in self.cells:
            row: dict[str, Any] = {"concurrency": cell[0], "max_tokens": cell[1]}
            for engine in ("skinflint", "vllm"):
                calls = self.calls(engine, cell)
                ok = [c for c in calls if c.ok]
                lat = [c.latency_ms for c in ok]
                row[engine] = {
                    "requests": len(calls), "errors": len(calls) - len(ok),
                    "p50_ms": common.percentile(lat, 50), "p99_ms": common.percentile(lat, 99),
                    "short_answers": sum(1 for c in ok if c.completion_tokens != cell[1]),
                    "output_tokens": sum(c.completion_tokens or 0 for c in ok),
                }
            over = [c.overhead_ms for c in self.calls("skinflint", cell) if c.ok and c.overhead_ms is not None]
            row["in_skinflint_p50_ms"] = common.percentile(over, 50)
            row["in_skinflint_p99_ms"] = common.percentile(over, 99)
            row["p50_ratio"] = _ratio(row["skinflint"]["p50_ms"], row["vllm"]["p50_ms"])
            row["p99_ratio"] = _ratio(row["skinflint"]["p99_ms"], row["vllm"]["p99_ms"])
            row["p99_ratio_by_round"] = [
                _ratio(common.percentile([c.latency_ms for c in self.calls("skinflint", cell, r) if c.ok], 99),
                       common.percentile([c.latency_ms for c in self.calls("vllm", cell, r) if c.ok], 99))
                for r in range(self.args.rounds)]
            row["p99_ratio_interval"] = self.p99_ratio_interval(cell)
            row["pairs"] = self._pairs(cell)
            rows.append(row)
        return rows

    def p99_ratio_interval(self, cell: Cell) -> list[float]:
        """A 90% interval for the cell's p99 ratio, from a paired bootstrap over its slices.

        Noise on a shared machine comes in bursts that last seconds, so requests are not independent
        draws; a slice (a stretch of requests measured on one engine and at once on the other) is.
        Each draw takes as many slices as were measured, with replacement, both engines' requests
        of each, and computes the ratio of the two pooled p99s.
        """
        slices: dict[tuple[int, int], dict[str, list[float]]] = defaultdict(dict)
        for run in self.runs:
            calls = [c for c in run["calls"] if 200 <= c["status"] < 300]
            if (run["concurrency"], run["max_tokens"]) != cell or not calls:
                continue
            key = (run["round"], min(c["index"] for c in run["calls"]))
            slices[key][run["engine"]] = [c["latency_ms"] for c in calls]
        paired = [s for s in slices.values() if len(s) == 2]
        if len(paired) < 2:
            return [math.nan, math.nan]
        rng = random.Random(f"{cell}")  # the same run always prints the same interval
        ratios = []
        for _ in range(BOOTSTRAP_DRAWS):
            drawn = [paired[rng.randrange(len(paired))] for _ in paired]
            ratios.append(_ratio(common.percentile([x for s in drawn for x in s["skinflint"]], 99),
                                 common.percentile([x for s in drawn for x in s["vllm"]], 99)))
        tail = (100 - INTERVAL) / 2
        return [common.percentile(ratios, tail), common.percentile(ratios, 100 - tail)]

    def _pairs(self, cell: Cell) -> dict[str, int]:
        """The same request (round, index) on both engines: did they do the same work?"""
        sk = {(r, c.index): c for r in range(self.args.rounds) for c in self.calls("skinflint", cell, r) if c.ok}
        vl = {(r, c.index): c for r in range(self.args.rounds) for c in self.calls("vllm", cell, r) if c.ok}
        both = sk.keys() & vl.keys()
        return {
            "compared": len(both),
            "prompt_tokens_differ": sum(1 for k in both if sk[k].prompt_tokens != vl[k].prompt_tokens),
            "completion_tokens_differ": sum(1 for k in both if sk[k].completion_tokens != vl[k].completion_tokens),
            "text_differs": sum(1 for k in both if sk[k].text_sha1 != vl[k].text_sha1),
        }

    def report(self, rows: list[dict[str, Any]]) -> str:
        headers = ["conc", "max_tok", "n/engine", "sf p50 ms", "vllm p50 ms", "p50 ratio", "sf p99 ms",
                   "vllm p99 ms", "p99 ratio", f"{INTERVAL}% interval", "<=1.10", "in-sf p50 ms", "in-sf p99 ms",
                   "p99 ratio by round"]
        body = []
        for row in rows:
            sk, vl = row["skinflint"], row["vllm"]
            body.append([
                str(row["concurrency"]), str(row["max_tokens"]), str(sk["requests"]),
                common.fmt(sk["p50_ms"]), common.fmt(vl["p50_ms"]), common.fmt(row["p50_ratio"], 3),
                common.fmt(sk["p99_ms"]), common.fmt(vl["p99_ms"]), common.fmt(row["p99_ratio"], 3),
                _interval(row), _verdict(row["p99_ratio"] <= P99_RATIO_TARGET),
                common.fmt(row["in_skinflint_p50_ms"], 2), common.fmt(row["in_skinflint_p99_ms"], 2),
                " ".join(common.fmt(r, 2) for r in row["p99_ratio_by_round"]),
            ])
        lines = [common.table(headers, body), ""]
        worst = max(rows, key=lambda r: -math.inf if math.isnan(r["p99_ratio"]) else r["p99_ratio"])
        all_ok = all(r["p99_ratio"] <= P99_RATIO_TARGET for r in rows)
        lines.append(f"target: p99 ratio skinflint/vLLM <= {P99_RATIO_TARGET:.2f} in every cell: "
                     f"{_verdict(all_ok)} (worst {common.fmt(worst['p99_ratio'], 3)} at c={worst['concurrency']} "
                     f"max_tokens={worst['max_tokens']}, {INTERVAL}% interval {_interval(worst)})")
        unclear = [r for r in rows if r["p99_ratio_interval"][0] <= P99_RATIO_TARGET < r["p99_ratio_interval"][1]]
        if unclear:
            cells = ", ".join(f"c={r['concurrency']} max_tokens={r['max_tokens']}" for r in unclear)
            lines.append(f"      {len(unclear)} of {len(rows)} cells have {P99_RATIO_TARGET:.2f} inside their "
                         f"{INTERVAL}% interval ({cells}): this run cannot tell on which side of it they are")
        c1 = [r for r in rows if r["concurrency"] == 1]
        c1_ok = all(r["in_skinflint_p99_ms"] < OVERHEAD_P99_TARGET_MS for r in c1)
        c1_text = ", ".join(f"max_tokens={r['max_tokens']}: {common.fmt(r['in_skinflint_p99_ms'], 2)} ms" for r in c1)
        lines.append(f"target: in-skinflint p99 < {OVERHEAD_P99_TARGET_MS:.0f} ms at concurrency 1: "
                     f"{_verdict(c1_ok)} ({c1_text})")
        lines += self._checks(rows)
        return "\n".join(lines)

    def _checks(self, rows: list[dict[str, Any]]) -> list[str]:
        lines = []
        for row in rows:
            cell = f"c={row['concurrency']} max_tokens={row['max_tokens']}"
            for engine in ("skinflint", "vllm"):
                s = row[engine]
                if s["errors"]:
                    lines.append(f"WARNING {engine} {cell}: {s['errors']} of {s['requests']} requests failed")
                if s["short_answers"]:
                    lines.append(f"WARNING {engine} {cell}: {s['short_answers']} answers ended before "
                                 f"max_tokens (the engines may not do equal work)")
            p = row["pairs"]
            if p["prompt_tokens_differ"] or p["completion_tokens_differ"]:
                lines.append(f"WARNING {cell}: of {p['compared']} paired requests, prompt tokens differ in "
                             f"{p['prompt_tokens_differ']} and completion tokens in {p['completion_tokens_differ']}")
        if not lines:
            lines.append("checks: no errors; every answer had max_tokens completion tokens on both engines; "
                         "prompt token counts equal")
        compared = sum(r["pairs"]["compared"] for r in rows)
        differ = sum(r["pairs"]["text_differs"] for r in rows)
        lines.append(f"info: {differ} of {compared} paired answers differ in text (greedy decoding can "
                     "diverge with batch composition)")
        for name, cpu in self.idle_cpu_s.items():
            wall = self.idle_wall_s[name]
            lines.append(f"info: {name} used {cpu:.1f} CPU-s while idle during {wall:.0f} s of the other's "
                         f"load ({100 * cpu / wall if wall else 0:.1f}% of one core)")
        return lines

    def save(self, complete: bool) -> list[dict[str, Any]]:
        """Writes results.json (also after a failure, with what was measured); returns the summary."""
        rows = self.summary() if complete else []
        self.meta.update(finished=time.time(), complete=complete, loadavg_end=list(os.getloadavg()),
                         idle_cpu_s=dict(self.idle_cpu_s), idle_wall_s=dict(self.idle_wall_s),
                         engine_config={t.name: targets.engine_config_from_log(t.engine_log()) for t in self.targets})
        common.save_json(self.out / "results.json", {"meta": self.meta, "summary": rows, "runs": self.runs})
        return rows


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def _interval(row: dict[str, Any]) -> str:
    low, high = row.get("p99_ratio_interval", [math.nan, math.nan])
    return f"{common.fmt(low, 2)}-{common.fmt(high, 2)}"


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """p50/p99 per cell for both engines, if matplotlib happens to be installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = [f"c={r['concurrency']}\nmax={r['max_tokens']}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, q in zip(axes, ("p50_ms", "p99_ms"), strict=True):
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r["skinflint"][q] for r in rows], width=0.4, label="skinflint")
        ax.bar([x + 0.2 for x in xs], [r["vllm"][q] for r in rows], width=0.4, label="vllm serve")
        ax.set_xticks(list(xs), labels)
        ax.set_yscale("log")
        ax.set_ylabel(f"{q[:3]} latency (ms)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def engine_config_notes(meta: dict[str, Any]) -> list[str]:
    sk, vl = meta["engine_config"].get("skinflint", {}), meta["engine_config"].get("vllm", {})
    differ = {k: (sk.get(k), vl.get(k)) for k in sk.keys() | vl.keys() if sk.get(k) != vl.get(k)}
    if differ:
        return [f"WARNING engine settings differ (skinflint, vllm): {differ}"]
    return [f"engine settings (from both logs): {sk}"]


def report_saved(path: Path) -> int:
    """Print the tables of an earlier run again (with whatever this version adds to them)."""
    data = json.loads(path.read_text())
    meta = data["meta"]
    args = parse_args([])
    vars(args).update({k: v for k, v in meta["args"].items() if k in vars(args)})
    bench = OverheadBench(args, path.parent)
    bench.runs, bench.meta = data["runs"], meta
    bench.idle_cpu_s.update(meta.get("idle_cpu_s", {}))
    bench.idle_wall_s.update(meta.get("idle_wall_s", {}))
    if not meta.get("complete", True):
        print(f"{path} holds an incomplete run")
        return 1
    print(bench.report(bench.summary()))
    print("\n".join(engine_config_notes(meta)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        return report_saved(args.report)
    common.end_on_sigterm()
    out = common.run_dir("overhead")
    bench = OverheadBench(args, out)
    complete = False
    try:
        bench.run()
        complete = True
    except RuntimeError as exc:
        common.log(f"FAILED: {exc}")
    except KeyboardInterrupt:
        common.log("interrupted")
    finally:
        common.shield_cleanup()
        common.log("stopping every process this run started")
        bench.stop_all()
        rows = bench.save(complete)
    common.log(f"raw results: {out / 'results.json'}")
    if not complete:
        return 1
    print()
    print(bench.report(rows))
    print("\n".join(engine_config_notes(bench.meta)))
    if plot(rows, out / "latency.png"):
        print(f"plot: {out / 'latency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
