"""Continuous batching through skinflint: output tokens/s at concurrency 32 against concurrency 1.

Closed-loop clients send non-streaming chat completions (max_tokens 64, temperature 0, prompts
that ask for long answers) through the whole path: HTTP -> ingress -> NATS -> worker -> vLLM.
Levels run in rounds whose order alternates (1, 8, 32, then 32, 8, 1, ...) so that a slow drift of
a noisy machine does not favour one level. Target: tokens/s at 32 clients >= 5x tokens/s at 1.

Starts nats-server, a worker and ingress itself (like `make run`, without accounting) unless
--url points at a running skinflint. Raw results: var/bench/batching-<time>/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import httpx

try:  # `python -m bench.batching` from the repo root
    from bench import common, targets
except ModuleNotFoundError:  # `python bench/batching.py`: bench/ itself is on the path
    import common  # type: ignore[no-redef]
    import targets  # type: ignore[no-redef]

RATIO_TARGET = 5.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Output tokens/s through skinflint at concurrency 32 against concurrency 1.",
        epilog="A full run takes about 3 minutes on 2 cores (plus a minute to start the stack).")
    parser.add_argument("--url", help="a running skinflint (e.g. http://127.0.0.1:8000); default: start one")
    parser.add_argument("--quick", action="store_true", help="few requests, one round: a smoke run")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32],
                        help="concurrency levels (default 1 8 32); the ratio is each against the lowest")
    parser.add_argument("--rounds", type=int, default=None, help="rounds over all levels (default 2; 1 with --quick)")
    parser.add_argument("--waves", type=int, default=None,
                        help="requests per level and round = waves x concurrency, at least --min-requests "
                             "(default 3; 1 with --quick)")
    parser.add_argument("--min-requests", type=int, default=None,
                        help="fewest requests per level and round (default 12; 4 with --quick)")
    parser.add_argument("--max-tokens", type=int, default=64, help="answer length (default 64)")
    parser.add_argument("--max-num-seqs", type=int, default=32, help="worker slots when the stack is started here")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.waves = args.waves or (1 if args.quick else 3)
    args.min_requests = args.min_requests or (4 if args.quick else 12)
    args.levels = sorted(set(args.levels))
    if args.levels[0] < 1:
        parser.error("--levels must be positive")
    return args


def requests_for(args: argparse.Namespace, concurrency: int) -> int:
    return max(args.min_requests, args.waves * concurrency)


def measure(args: argparse.Namespace, base_url: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    with asyncio.Runner() as runner:
        client = common.make_client()
        try:
            common.log("warming up (one wave at every level)")
            for level in args.levels:
                runner.run(common.run_load(client, base_url, level, max(4, level), args.max_tokens))
            for round_no in range(args.rounds):
                for level in args.levels if round_no % 2 == 0 else args.levels[::-1]:
                    result = runner.run(common.run_load(client, base_url, level, requests_for(args, level),
                                                        args.max_tokens))
                    runs.append({"round": round_no, **result.as_dict()})
                    _progress(args, round_no, result)
        finally:
            runner.run(client.aclose())
    return runs


def _progress(args: argparse.Namespace, round_no: int, result: common.LoadResult) -> None:
    errors = result.errors
    extra = f", {len(errors)} ERRORS (first: {errors[0].status} {errors[0].error})" if errors else ""
    common.log(f"round {round_no + 1}/{args.rounds} c={result.concurrency:<2}: {len(result.calls)} requests, "
               f"{result.output_tokens} output tokens in {result.wall_s:.1f} s = "
               f"{result.output_tokens / result.wall_s:.1f} tokens/s{extra}")


def summarise(args: argparse.Namespace, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for level in args.levels:
        mine = [r for r in runs if r["concurrency"] == level]
        calls = [c for r in mine for c in r["calls"]]
        ok = [c for c in calls if c["status"] == 200 and c["error"] is None]
        tokens = sum(c["completion_tokens"] or 0 for c in ok)
        seconds = sum(r["wall_s"] for r in mine)
        rows.append({"concurrency": level, "requests": len(calls), "errors": len(calls) - len(ok),
                     "short_answers": sum(1 for c in ok if c["completion_tokens"] != args.max_tokens),
                     "output_tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds})
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["ratio"] = row["tokens_per_s"] / base if base else float("nan")
    return rows


def report(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    headers = ["concurrency", "requests", "output tokens", "seconds", "tokens/s",
               f"ratio vs c={rows[0]['concurrency']}"]
    body = [[str(r["concurrency"]), str(r["requests"]), str(r["output_tokens"]), common.fmt(r["seconds"]),
             common.fmt(r["tokens_per_s"]), common.fmt(r["ratio"], 2) + "x"] for r in rows]
    lines = [common.table(headers, body), ""]
    by_level = {r["concurrency"]: r for r in rows}
    if 1 in by_level and 32 in by_level:
        ratio = by_level[32]["ratio"] / by_level[1]["ratio"]
        verdict = "ok" if ratio >= RATIO_TARGET else "MISS"
        lines.append(f"target: tokens/s at concurrency 32 >= {RATIO_TARGET:.0f}x concurrency 1: "
                     f"{verdict} ({ratio:.2f}x)")
    else:
        lines.append("target: needs levels 1 and 32 (see --levels)")
    for r in rows:
        if r["errors"]:
            lines.append(f"WARNING c={r['concurrency']}: {r['errors']} of {r['requests']} requests failed")
        if r["short_answers"]:
            lines.append(f"WARNING c={r['concurrency']}: {r['short_answers']} answers ended before "
                         f"{args.max_tokens} tokens (tokens/s still counts real tokens)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.end_on_sigterm()
    out = common.run_dir("batching")
    meta: dict[str, Any] = {"args": vars(args), "started": time.time()}
    runs: list[dict[str, Any]] = []
    target: targets.SkinflintTarget | None = None
    rows: list[dict[str, Any]] = []

    def clean_up(complete: bool) -> None:
        nonlocal rows
        if target is not None:
            common.log("stopping the stack")
            target.stop()
        rows = summarise(args, runs) if complete else []
        meta.update(finished=time.time(), complete=complete)
        common.save_json(out / "results.json", {"meta": meta, "summary": rows, "runs": runs})

    with common.attempt(clean_up) as outcome:
        try:
            base_url = args.url
            if base_url is None:
                target = targets.SkinflintTarget(out / "skinflint",
                                                 targets.EngineSettings(max_num_seqs=args.max_num_seqs))
                common.log("starting nats-server, a worker and ingress (about a minute)")
                target.start()
                base_url = target.base_url
                common.log(f"skinflint is up at {base_url}")
            base_url = base_url.rstrip("/").removesuffix("/v1")
            httpx.get(f"{base_url}/healthz", timeout=5).raise_for_status()
            meta["url"] = base_url
            runs = measure(args, base_url)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"skinflint does not answer at {args.url or 'the stack started here'}: {exc}") from exc
    common.log(f"raw results: {out / 'results.json'}")
    if not outcome.complete:
        return 1
    print()
    print(report(args, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
