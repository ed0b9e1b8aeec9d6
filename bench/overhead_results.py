"""What `overhead.py` measured, summarised: statistics per cell, how sure the p99 ratio is, and the
printed report. Kept apart from the measuring, so that a saved run can be reported again
(`overhead.py --report`) without any engine."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # `python -m bench.overhead` from the repo root
    from bench import common
except ModuleNotFoundError:  # `python bench/overhead.py`: bench/ itself is on the path
    import common  # type: ignore[no-redef]

Cell = tuple[int, int]  # (concurrency, max_tokens)
CONCURRENCIES = (1, 8, 32)
MAX_TOKENS = (1, 64)
ALL_CELLS: list[Cell] = [(c, m) for c in CONCURRENCIES for m in MAX_TOKENS]

P99_RATIO_TARGET = 1.10
OVERHEAD_P99_TARGET_MS = 5.0
# The p99 ratio's uncertainty: a bootstrap over the slices, each drawn with both engines' requests.
BOOTSTRAP_DRAWS = 1000
INTERVAL = 90  # percent


@dataclass
class Results:
    """Every measured slice (``runs``: one engine, one cell, one round or part of it, with its calls)
    and the CPU the idle engine used meanwhile."""

    cells: list[Cell]
    rounds: int
    runs: list[dict[str, Any]] = field(default_factory=list)
    idle_cpu_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    idle_wall_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @classmethod
    def load(cls, path: Path) -> tuple[Results, dict[str, Any]]:
        """The results and the meta data of a saved run (``results.json``), over the cells it
        measured (every cell, for runs from before ``--cells``)."""
        data = json.loads(path.read_text())
        meta = data["meta"]
        saved = meta["args"].get("cells")
        cells = [(int(c), int(m)) for c, m in saved] if saved else list(ALL_CELLS)
        results = cls(cells, int(meta["args"]["rounds"]), data["runs"])
        results.idle_cpu_s.update(meta.get("idle_cpu_s", {}))
        results.idle_wall_s.update(meta.get("idle_wall_s", {}))
        return results, meta

    def slices(self, cell: Cell, engine: str | None = None) -> Iterator[tuple[dict[str, Any], list[common.Call]]]:
        """Every measured slice of ``cell`` (on ``engine``, or on both), with its calls."""
        for run in self.runs:
            if (run["concurrency"], run["max_tokens"]) == cell and engine in (None, run["engine"]):
                yield run, [common.Call(**c) for c in run["calls"]]

    def calls(self, engine: str, cell: Cell, round_no: int | None = None) -> list[common.Call]:
        found = []
        for run, calls in self.slices(cell, engine):
            if round_no is None or run["round"] == round_no:
                found += calls
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
            row["in_skinflint_slice_start"] = self._slice_starts(cell)
            row["phases_ms"] = self._phases(cell)
            row["p50_ratio"] = _ratio(row["skinflint"]["p50_ms"], row["vllm"]["p50_ms"])
            row["p99_ratio"] = _ratio(row["skinflint"]["p99_ms"], row["vllm"]["p99_ms"])
            row["p99_ratio_by_round"] = [
                _ratio(common.percentile([c.latency_ms for c in self.calls("skinflint", cell, r) if c.ok], 99),
                       common.percentile([c.latency_ms for c in self.calls("vllm", cell, r) if c.ok], 99))
                for r in range(self.rounds)]
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
        for run, calls in self.slices(cell):
            ok = [c.latency_ms for c in calls if c.ok]
            if not ok:
                continue
            slices[(run["round"], min(c.index for c in calls))][run["engine"]] = ok
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

    def _slice_starts(self, cell: Cell) -> dict[str, float]:
        """In-skinflint time of each slice's first request (the first after the other engine's
        turn, with every cache cold) against the rest of the cell's requests."""
        first, rest = [], []
        for _, calls in self.slices(cell, "skinflint"):
            over = [c.overhead_ms if c.ok else None for c in sorted(calls, key=lambda c: c.index)]
            first += [ms for ms in over[:1] if ms is not None]
            rest += [ms for ms in over[1:] if ms is not None]
        return {"first_n": len(first), "first_p50_ms": common.percentile(first, 50),
                "first_max_ms": max(first, default=math.nan), "rest_p50_ms": common.percentile(rest, 50),
                "rest_p99_ms": common.percentile(rest, 99)}

    def _phases(self, cell: Cell) -> dict[str, list[float]]:
        """p50 and p99 of each phase of skinflint's own time (from runs that recorded them)."""
        per_phase: dict[str, list[float]] = defaultdict(list)
        for call in self.calls("skinflint", cell):
            if call.ok and call.phases_ms:
                for name, ms in call.phases_ms.items():
                    per_phase[name].append(ms)
        return {name: [common.percentile(v, 50), common.percentile(v, 99)] for name, v in per_phase.items()}

    def _pairs(self, cell: Cell) -> dict[str, int]:
        """The same request (round, index) on both engines: did they do the same work?"""
        sk = {(r, c.index): c for r in range(self.rounds) for c in self.calls("skinflint", cell, r) if c.ok}
        vl = {(r, c.index): c for r in range(self.rounds) for c in self.calls("vllm", cell, r) if c.ok}
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
        lines += _slice_start_lines(c1)
        skipped = [c for c in ALL_CELLS if c not in self.cells]
        if skipped:
            lines.append("partial run: not measured " + ", ".join(f"c={c} max_tokens={m}" for c, m in skipped)
                         + "; the verdicts above cover the measured cells only")
        lines += self._checks(rows)
        lines += _phase_table(c1)
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


def _slice_start_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in rows:
        s = row["in_skinflint_slice_start"]
        if s["first_n"]:
            lines.append(
                f"      max_tokens={row['max_tokens']}: the {s['first_n']} slices' first requests (after the other "
                f"engine's turn) took {common.fmt(s['first_p50_ms'], 2)} ms in skinflint at p50, "
                f"{common.fmt(s['first_max_ms'], 2)} at most; the rest {common.fmt(s['rest_p50_ms'], 2)} / "
                f"{common.fmt(s['rest_p99_ms'], 2)} ms at p50 / p99")
    return lines


def _phase_table(rows: list[dict[str, Any]]) -> list[str]:
    """Where skinflint's own time goes at concurrency 1: p50 / p99 of each phase, in ms."""
    names = list(dict.fromkeys(name for row in rows for name in row["phases_ms"]))
    if not names:
        return []
    body = [[str(row["max_tokens"]),
             *(" / ".join(common.fmt(v, 2) for v in row["phases_ms"].get(name, [math.nan, math.nan]))
               for name in names),
             f"{common.fmt(row['in_skinflint_p50_ms'], 2)} / {common.fmt(row['in_skinflint_p99_ms'], 2)}"]
            for row in rows]
    return ["", "where skinflint's own time goes at concurrency 1, p50 / p99 ms per phase (ingress_in: until the "
            "hand-off; to_worker / to_ingress: the bus crossings; worker_in / worker_out: the worker around the "
            "engine; ingress_out: until the answer is ready)",
            common.table(["max_tok", *names, "in-skinflint"], body)]


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
