"""Chat beside bulk work (issue 14): what a bulk backlog costs chat, and what bulk gets of the engine.

Two figures from one run, both against a baseline measured in the same run:

1. Interactive time to first token: streamed chat requests through ingress at a fixed Poisson
   arrival rate, short prompts, in blocks with no bulk work and blocks during which a bulk backlog
   keeps the worker's bulk slots busy (checked on its heartbeats). Blocks run in ABBA order, each
   with the same arrival schedule and prompts. Target: p95 with bulk <= 1.5x p95 without.
2. Bulk output tokens/s: a backlog of bulk tasks and no chat, through the real worker, against the
   engine's own saturated rate: vLLM's ``AsyncLLM`` built as the worker builds it, in a process of
   its own with every one of its ``max_num_seqs`` slots kept busy (``bench/priority_engine.py``),
   same prompts rendered the same way, same max_tokens, in rounds that alternate which goes first.
   Each rate is taken in the steady state: from the max_num_seqs-th completion to the
   max_num_seqs-th last. Target: >= 80% of the engine's own.

skinflint runs as `make run` starts it (nats-server, the small tier's worker with the vLLM CPU
engine, ingress, the batch service), with the pipeline cut to inference alone (no cache, no
classifier: what is measured is the worker's scheduling). Bulk work is submitted as a user does
(`--submit batch-api`, the default: a JSONL file and a batch through the openai SDK; a bulk block's
batch is cancelled after the block), or published as bulk task envelopes into SF_BULK (`--submit
bus`, the hop the batch service makes for each item). Modules: priority_load.py (the load),
priority_engine.py (the baseline), priority_stats.py (arithmetic), priority_report.py (summary).
Raw results: var/bench/priority-<time>/results.json. Run it under `flock /tmp/skinflint-engine.lock`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import asdict
from typing import Any

try:  # `python -m bench.priority` from the repo root
    from bench import common, targets
    from bench import priority_load as load
    from bench import priority_stats as ps
    from bench.priority_engine import EngineBaseline
    from bench.priority_report import ENGINE_AT_BULK, bulk_slots, plot, report, summarise
except ModuleNotFoundError:  # `python bench/priority.py`: bench/ itself is on the path
    import common  # type: ignore[no-redef]
    import priority_load as load  # type: ignore[no-redef]
    import priority_stats as ps  # type: ignore[no-redef]
    import targets  # type: ignore[no-redef]
    from priority_engine import EngineBaseline  # type: ignore[no-redef]
    from priority_report import ENGINE_AT_BULK, bulk_slots, plot, report, summarise  # type: ignore[no-redef]

__all__ = ["main", "parse_args", "report", "summarise"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Chat TTFT with and without a bulk backlog; bulk tokens/s against the engine alone.",
        epilog="About 10 minutes on 2 cores, two engine start-ups included. Run it under "
               "`flock /tmp/skinflint-engine.lock`.")
    parser.add_argument("--quick", action="store_true", help="a smoke run: figures are not meaningful")
    parser.add_argument("--submit", choices=["batch-api", "bus"], default="batch-api",
                        help="how bulk work is submitted: batch-api (default) = JSONL files and batches through "
                             "the openai SDK, ingress and the batch service; bus = bulk task envelopes published "
                             "straight into SF_BULK (the batch service's hop)")
    parser.add_argument("--max-num-seqs", type=int, default=32, help="engine slots, both engines (default 32)")
    parser.add_argument("--interactive-reserve", type=int, default=None,
                        help="SF_INTERACTIVE_RESERVE for the worker (default: the worker's own, 4)")
    parser.add_argument("--max-tokens", type=int, default=64, help="bulk answer length (default 64)")
    parser.add_argument("--rounds", type=int, default=None, help="throughput rounds (default 3; 1 with --quick)")
    parser.add_argument("--bulk-requests", type=int, default=None,
                        help="requests per throughput run (default 6 x max-num-seqs; 3 x with --quick)")
    parser.add_argument("--pairs", type=int, default=None, help="TTFT block pairs (default 6; 1 with --quick)")
    parser.add_argument("--block", type=int, default=None, help="chat requests per block (default 40; 10)")
    parser.add_argument("--gap-ms", type=float, default=300.0, help="mean gap between chat requests (default 300)")
    parser.add_argument("--chat-max-tokens", type=int, default=16, help="chat answer length (default 16)")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.bulk_requests = args.bulk_requests or (3 if args.quick else 6) * args.max_num_seqs
    args.pairs = args.pairs or (1 if args.quick else 6)
    args.block = args.block or (10 if args.quick else 40)
    return args



def engine_result(raw: dict[str, Any], n: int, edge: int, label: str) -> dict[str, Any]:
    finishes = [(float(t), int(tok)) for t, tok in raw["finishes"]]
    return {"who": "engine", "job": label, "requests": n, "errors": len(raw["errors"]),
            "first_error": raw["errors"][:1], "completion_tokens": [tok for _, tok in finishes],
            "rate": asdict(ps.steady_rate(finishes, edge))}


async def measure(args: argparse.Namespace, engine: EngineBaseline, skinflint_url: str, nats_url: str,
                  data: dict[str, Any]) -> None:
    """Fills ``data`` as it goes (``throughput``, then ``ttft``), so a failed run keeps what it measured."""
    edge = args.max_num_seqs
    probe = await load.BusProbe.connect(nats_url, args.max_tokens)
    chat_client = common.make_client()
    api = load.BatchApi(skinflint_url, args.max_tokens) if args.submit == "batch-api" else None
    try:
        common.log("warming up both engines (a wave of bulk, a few chats)")
        await engine.run(args.max_num_seqs, args.max_num_seqs, 8, "warm-up")
        await load.skinflint_bulk_run(probe, api, "warmup", args.max_num_seqs, 1)
        for i in range(4):
            await load.ttft_call(chat_client, skinflint_url, load.CHAT_PROMPTS[i], args.chat_max_tokens)
        runs: list[dict[str, Any]] = data.setdefault("throughput", [])
        for round_no in range(args.rounds):
            order = ["engine", "skinflint"] if round_no % 2 == 0 else ["skinflint", "engine"]
            for who in order:
                await asyncio.sleep(1.5)  # the other engine's busy-polling ends
                turn = []
                if who == "engine":
                    # The ceiling: every slot of the engine busy. Then, for information, as many at once as
                    # the worker's bulk slots (the reserve's share of the gap).
                    for label, concurrency in (("engine", args.max_num_seqs), (ENGINE_AT_BULK, bulk_slots(args))):
                        raw = await engine.run(args.bulk_requests, concurrency, args.max_tokens, f"{label}{round_no}")
                        turn.append({**engine_result(raw, args.bulk_requests, edge, f"r{round_no}"), "who": label,
                                     "concurrency": concurrency})
                        await asyncio.sleep(1.5)
                else:
                    turn.append(await load.skinflint_bulk_run(probe, api, f"tp{round_no}", args.bulk_requests, edge))
                for run in turn:
                    run["round"] = round_no
                    run["loadavg_1m"] = os.getloadavg()[0]
                    runs.append(run)
                    rate = ps.Rate(**run["rate"])
                    busy = (f", bulk in flight {min(run['inflight_bulk'], default=0)}-"
                            f"{max(run['inflight_bulk'], default=0)}" if who == "skinflint" else "")
                    common.log(f"round {round_no + 1}/{args.rounds} {run['who']:>15}: {rate.per_s:7.1f} output "
                               f"tokens/s ({rate.tokens} tokens in {rate.seconds:.1f} s, steady window), "
                               f"{run['errors']} errors{busy}")
        common.log("time to first token, blocks with and without a bulk backlog")
        bulk_tps = ps.pooled_rate([ps.Rate(**r["rate"]) for r in runs if r["who"] == "skinflint"])
        data["ttft"] = await load.ttft_blocks(args, bulk_slots(args), probe, api, chat_client, skinflint_url,
                                              bulk_tps)
    finally:
        await chat_client.aclose()
        if api is not None:
            await api.close()
        await probe.close()


def start_batch_service(skinflint: targets.SkinflintTarget) -> None:
    """The batch service, as `make run` starts it: it turns a batch's lines into bulk tasks."""
    common.log("starting the batch service")
    proc = skinflint.stack.start_service("batch", "services.batch")
    assert proc.health_port is not None
    skinflint.stack.wait_http(proc.health_port, "/readyz", 60, "the batch service")



def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.end_on_sigterm()
    out = common.run_dir("priority")
    meta: dict[str, Any] = {"args": vars(args), "started": time.time()}
    data: dict[str, Any] = {}
    settings = targets.EngineSettings(max_num_seqs=args.max_num_seqs)
    engine = EngineBaseline(out / "engine", settings)
    skinflint = targets.SkinflintTarget(out / "skinflint", settings)
    skinflint.stack.env["SF_PIPELINE"] = '["infer"]'
    if args.interactive_reserve is not None:
        skinflint.stack.env["SF_INTERACTIVE_RESERVE"] = str(args.interactive_reserve)

    def clean_up(complete: bool) -> None:
        common.log("stopping both engines")
        engine.stop()
        skinflint.stop()
        meta.update(finished=time.time(), complete=complete,
                    engine_config={"engine": targets.engine_config_from_log(engine.engine_log()),
                                   "skinflint": targets.engine_config_from_log(skinflint.engine_log())})
        common.save_json(out / "results.json", {"meta": meta, **data})

    with common.attempt(clean_up) as outcome:
        common.log("starting the engine baseline: vLLM's AsyncLLM as the worker builds it (about a minute)")
        engine.start()
        common.log("starting nats-server, a worker and ingress (about a minute)")
        skinflint.start()
        if args.submit == "batch-api":
            start_batch_service(skinflint)
        asyncio.run(measure(args, engine, skinflint.base_url, skinflint.stack.nats_url, data))
    common.log(f"raw results: {out / 'results.json'}")
    if not outcome.complete:
        return 1
    summary = summarise(args, data)
    common.save_json(out / "summary.json", summary)
    plot(out / "ttft.png", data)
    print()
    _, code = report(args, summary)
    configs = meta["engine_config"]
    if configs["engine"] != configs["skinflint"]:
        print(f"WARNING: the engines logged different settings: {configs}")
    return code


if __name__ == "__main__":
    sys.exit(main())
