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
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

try:  # `python -m bench.overhead` from the repo root
    from bench import common, targets
    from bench.overhead_results import ALL_CELLS, Cell, Results, engine_config_notes, plot
except ModuleNotFoundError:  # `python bench/overhead.py`: bench/ itself is on the path
    import common  # type: ignore[no-redef]
    import targets  # type: ignore[no-redef]
    from overhead_results import ALL_CELLS, Cell, Results, engine_config_notes, plot  # type: ignore[no-redef]

Target = targets.SkinflintTarget | targets.VllmServeTarget

# Requests per cell and round. A p99 means little below ~100 samples (pooled over the rounds), and
# over a few hundred it still rests on the handful of slowest requests, so the cheap one-token cells
# get many more; the c=1 x 64-token cell costs ~1-2 s a request per engine, and still gets 60 a round
# (360 over six rounds), so its p99 is not simply its slowest request or two.
REQUESTS: dict[Cell, int] = {(1, 1): 200, (1, 64): 60, (8, 1): 192, (8, 64): 48, (32, 1): 384, (32, 64): 96}
QUICK_REQUESTS: dict[Cell, int] = {(1, 1): 4, (1, 64): 4, (8, 1): 8, (8, 64): 8, (32, 1): 32, (32, 64): 32}
#: With both engines up, each round of a cell is measured in up to this many slices, alternating.
PARTS = 4
BOTH_UP_MIN_GIB = 14.0  # two engines at ~5 GiB each, and room left for the rest of the machine
# vLLM's worker keeps busy-polling its shared-memory queue for 1 s after its last step
# (SpinCondition in shm_broadcast.py): wait that out so the engine measured before is idle.
SETTLE_S = 1.5


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
    parser.add_argument("--cells", type=parse_cells, default=None, metavar="CxM,...",
                        help="measure only these cells, as concurrency x max_tokens (e.g. 1x1,8x1,32x1); "
                             "the targets are then judged on those cells only")
    parser.add_argument("--report", type=Path, metavar="RESULTS_JSON",
                        help="measure nothing: print the tables of an earlier run from its results.json")
    args = parser.parse_args(argv)
    if args.rounds is None:
        # Six: with three, most p99 ratios on a noisy 2-core VM had intervals holding the target.
        args.rounds = 1 if args.quick else 6
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def parse_cells(text: str) -> list[Cell]:
    """``"1x1,8x64"`` -> ``[(1, 1), (8, 64)]``, in the bench's own order; only cells it knows."""
    wanted = set()
    for item in text.split(","):
        conc, sep, tokens = item.strip().lower().partition("x")
        if not sep or not conc.isdigit() or not tokens.isdigit():
            raise argparse.ArgumentTypeError(f"{item!r} is not CONCURRENCYxMAX_TOKENS, e.g. 8x64")
        cell = (int(conc), int(tokens))
        if cell not in ALL_CELLS:
            raise argparse.ArgumentTypeError(f"{item!r} is not one of the bench's cells: "
                                             + ",".join(f"{c}x{m}" for c, m in ALL_CELLS))
        wanted.add(cell)
    return [cell for cell in ALL_CELLS if cell in wanted]


class OverheadBench:
    """Runs the cells on both targets and keeps every call, then summarises."""

    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args = args
        self.out = out
        self.settings = targets.EngineSettings(max_num_seqs=args.max_num_seqs)
        self.targets: list[Target] = [targets.SkinflintTarget(out / "skinflint", self.settings),
                                      targets.VllmServeTarget(out / "vllm", self.settings)]
        self.cells: list[Cell] = args.cells or list(ALL_CELLS)
        self.requests = QUICK_REQUESTS if args.quick else REQUESTS
        self.results = Results(self.cells, args.rounds)
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
            self.results.idle_cpu_s[t.name] += targets.session_usage(t.sessions())[0] - before[t.name]
            self.results.idle_wall_s[t.name] += result.wall_s
        self.results.runs.append({"engine": target.name, "round": round_no, **result.as_dict()})
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

    def save(self, complete: bool) -> list[dict[str, Any]]:
        """Writes results.json (also after a failure, with what was measured); returns the summary."""
        results = self.results
        rows = results.summary() if complete else []
        self.meta.update(finished=time.time(), complete=complete, loadavg_end=list(os.getloadavg()),
                         idle_cpu_s=dict(results.idle_cpu_s), idle_wall_s=dict(results.idle_wall_s),
                         engine_config={t.name: targets.engine_config_from_log(t.engine_log()) for t in self.targets})
        common.save_json(self.out / "results.json", {"meta": self.meta, "summary": rows, "runs": results.runs})
        return rows


def report_saved(path: Path) -> int:
    """Print the tables of an earlier run again (with whatever this version adds to them)."""
    results, meta = Results.load(path)
    if not meta.get("complete", True):
        print(f"{path} holds an incomplete run")
        return 1
    print(results.report(results.summary()))
    print("\n".join(engine_config_notes(meta)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        return report_saved(args.report)
    common.end_on_sigterm()
    out = common.run_dir("overhead")
    bench = OverheadBench(args, out)
    rows: list[Any] = []

    def clean_up(complete: bool) -> None:
        nonlocal rows
        common.log("stopping every process this run started")
        bench.stop_all()
        rows = bench.save(complete)

    with common.attempt(clean_up) as outcome:
        bench.run()
    common.log(f"raw results: {out / 'results.json'}")
    if not outcome.complete:
        return 1
    print()
    print(bench.results.report(rows))
    print("\n".join(engine_config_notes(bench.meta)))
    if plot(rows, out / "latency.png"):
        print(f"plot: {out / 'latency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
