"""What skinflint adds as a gateway: its upstream tier in front of a zero-latency provider,
against that provider called directly, in one run.

The provider is ``bench/mock_openai.py`` (its own process; pre-built answers of ``--chunks``
pieces, 64 by default). skinflint is nats-server, ingress and ONE upstream worker whose tier's
``base_url`` is the mock, started through ``services.stack`` with a tiers file and a tenants file
written into the run's folder. The pipeline is ``["infer"]``: the cache and the classifier are off,
so what is measured is the gateway path (HTTP -> ingress -> NATS -> worker -> HTTP to the
provider and back). The accounting service is not started (as in overhead.py): usage events wait
in JetStream, so the worker's publish and nats-server's storing of them are counted, the ledger's
writes are not (they are off the request path in any deployment).

The load generator (``bench/gateway_load.py``) runs in this process, on the same two cores,
and checks every answer (status, body, the mock's text, usage, ``[DONE]``).

Part 1, one client (closed loop, one request at a time): non-streamed, then streamed, in slices
that alternate between the mock direct and skinflint, so that slow drift of the machine falls on
both. Printed: p50 / p99 of both and what skinflint adds (90% bootstrap interval over slices),
and skinflint's own time per phase of the path (``x-skinflint-phases-ms``).
Part 2, saturation: ``--connections`` clients for ``--duration`` seconds per round, both
targets, both modes; requests/s, errors, and the CPU each process used (from /proc).
Targets (issue 13): added p50 <= 2 ms and p99 <= 5 ms at one client; >= 400 req/s
non-streamed and >= 100 streamed at saturation, without errors.

    .venv/bin/python bench/gateway.py [--quick]

Raw results: var/bench/gateway-<time>/results.json; the services' logs beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvloop
import yaml

from services.shared import lifeline
from services.stack import ROOT, Stack, free_port, wait_for_port

try:  # `python -m bench.gateway` from the repo root
    from bench import common, gateway_report, mock_openai
    from bench.cache_common import load_line
    from bench.gateway_load import LoadResult, Target, chat_body, chat_request, run_load
    from bench.targets import session_usage
except ModuleNotFoundError:  # `python bench/gateway.py`: bench/ itself is on the path
    import common  # type: ignore[no-redef]
    import gateway_report  # type: ignore[no-redef]
    import mock_openai  # type: ignore[no-redef]
    from cache_common import load_line  # type: ignore[no-redef]
    from gateway_load import LoadResult, Target, chat_body, chat_request, run_load  # type: ignore[no-redef]
    from targets import session_usage  # type: ignore[no-redef]

#: The tier the worker serves: "large" is priced in the shipped pricebook, as ingress requires.
TIER = "large"
PUBLIC_MODEL = "bench-gateway"
BENCH_KEY = "sk-skinflint-bench-gateway"
MODES = ("json", "stream")
#: The share of one core other processes may use while the bench measures (``--quiet-wait``).
QUIET_SHARE = 0.10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="A full run takes about 2-3 minutes on a quiet machine; --quick under one.")
    parser.add_argument("--quick", action="store_true", help="few requests, short runs: a smoke run")
    parser.add_argument("--slices", type=int, default=None, help="one-client slices per target and mode (8)")
    parser.add_argument("--per-slice", type=int, default=None, help="requests per one-client slice (500)")
    parser.add_argument("--connections", type=int, default=32, help="clients at saturation (32)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per saturation run (10)")
    parser.add_argument("--rounds", type=int, default=None, help="saturation runs per target and mode (2)")
    parser.add_argument("--chunks", type=int, default=mock_openai.CHUNKS,
                        help=f"pieces of a streamed answer ({mock_openai.CHUNKS})")
    parser.add_argument("--quiet-wait", type=float, default=60.0, metavar="SECONDS",
                        help="before each measurement, wait up to this long for the rest of the machine to use "
                             f"under {QUIET_SHARE:.0%}% of a core (other work on 2 cores skews every figure; "
                             "0: never wait)")
    parser.add_argument("--service-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for every process of skinflint (nats-server too), to "
                             "measure a setting: e.g. SF_OTEL_SAMPLE_RATIO=0 or GOMAXPROCS=1; repeatable")
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.service_env):
        parser.error("--service-env takes NAME=VALUE")
    quick = args.quick
    for name, full, small in (("slices", 8, 2), ("per_slice", 500, 50), ("duration", 10.0, 2.0), ("rounds", 2, 1)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if min(args.slices, args.per_slice, args.connections, args.rounds) < 1 or args.duration <= 0:
        parser.error("counts and the duration must be positive")
    return args


# --- the processes -------------------------------------------------------------------------------

def write_configs(out: Path, mock_port: int) -> tuple[Path, Path]:
    """The tenants file (the shipped one plus the bench's tenant, limits far above any rate
    reached here) and a tiers file with one upstream tier in front of the mock."""
    tenants = yaml.safe_load((ROOT / "infra" / "config" / "tenants.yaml").read_text())
    tenants["tenants"].append({"name": "bench-gateway", "keys": [{"id": "bench-gateway-key", "key": BENCH_KEY}],
                               "requests_per_minute": 10_000_000, "burst": 1_000_000, "max_concurrent": 1024})
    tiers = {"tiers": {TIER: {"kind": "upstream", "model": PUBLIC_MODEL,
                              "description": "bench/gateway.py: the zero-latency mock",
                              "upstream": {"base_url": f"http://127.0.0.1:{mock_port}/v1",
                                           "model": mock_openai.MODEL, "retries": 0}}},
             "models": {PUBLIC_MODEL: {"tier": TIER}}}
    tenants_path, tiers_path = out / "tenants.yaml", out / "tiers.yaml"
    tenants_path.write_text(yaml.safe_dump(tenants, sort_keys=False))
    tiers_path.write_text(yaml.safe_dump(tiers, sort_keys=False))
    return tenants_path, tiers_path


@dataclass
class Running:
    mock: subprocess.Popen[bytes]
    mock_port: int
    stack: Stack
    ingress_port: int = 0

    def pids(self) -> dict[str, int]:
        """Process name -> pid (each leads a session of its own, which ``session_usage`` sums)."""
        return {"mock": self.mock.pid, **{name: p.process.pid for name, p in self.stack.procs.items()}}

    def stop(self) -> None:
        self.stack.stop()
        if self.mock.poll() is None:
            os.killpg(self.mock.pid, signal.SIGTERM)
            self.mock.wait(timeout=10)


def start(out: Path, chunks: int, env: dict[str, str] | None = None) -> Running:
    mock_port = free_port()
    (out / "log").mkdir(parents=True, exist_ok=True)
    with open(out / "log" / "mock.log", "ab") as log_file:
        mock = subprocess.Popen([sys.executable, "-m", "bench.mock_openai", "--port", str(mock_port),
                                 "--chunks", str(chunks)], cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=lifeline.die_with_parent_preexec(signal.SIGTERM))
    tenants, tiers = write_configs(out, mock_port)
    stack = Stack(var_dir=out, env={"SF_TENANTS_FILE": str(tenants), "SF_TIERS_FILE": str(tiers),
                                    "SF_PIPELINE": '["infer"]', "SF_OPTIONAL_STAGES": "[]", **(env or {})})
    running = Running(mock, mock_port, stack)
    try:
        wait_for_port(mock_port, mock, 20)
        stack.start_nats(free_port())
        stack.start_service("worker", "services.worker", {"SF_TIER": TIER})
        running.ingress_port = stack.start_ingress(free_port())
        stack.wait_ready(timeout_s=60, what="the upstream worker")
    except BaseException:
        running.stop()
        raise
    return running


def service_env(args: argparse.Namespace) -> dict[str, str]:
    return dict(item.split("=", 1) for item in args.service_env)


def targets(running: Running, stream: bool, chunks: int) -> tuple[Target, Target]:
    """(the mock direct, skinflint) for one mode."""
    text = mock_openai.answer_text(chunks)
    host, path = "127.0.0.1", "/v1/chat/completions"
    direct = Target("direct", host, running.mock_port,
                    chat_request(host, running.mock_port, path, chat_body(mock_openai.MODEL, stream)), stream, text)
    skinflint = Target("skinflint", host, running.ingress_port,
                       chat_request(host, running.ingress_port, path, chat_body(PUBLIC_MODEL, stream), BENCH_KEY),
                       stream, text)
    return direct, skinflint


def mock_calls(running: Running) -> int:
    return int(httpx.get(f"http://127.0.0.1:{running.mock_port}/mock/stats", timeout=5).json()["chat"])


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all CPUs; /proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds each process used since it was made, and what the rest of the machine used."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before = {name: session_usage([pid])[0] for name, pid in pids.items()}
        self.machine, self.ours = machine_busy_s(), time.process_time()

    def read(self, load_generator_s: float) -> dict[str, float]:
        """Per process, ``load generator`` (this process's event loop thread, measured by the
        caller) and ``others``: the rest of the machine (this process's other threads included)."""
        machine, ours = machine_busy_s() - self.machine, time.process_time() - self.ours
        cpu = {name: session_usage([pid])[0] - self.before[name] for name, pid in self.pids.items()}
        cpu["load generator"] = load_generator_s
        cpu["others"] = max(0.0, machine - sum(cpu.values()) - (ours - load_generator_s))
        return cpu


# --- measuring -----------------------------------------------------------------------------------

class GatewayBench:
    def __init__(self, args: argparse.Namespace, running: Running, runner: asyncio.Runner) -> None:
        self.args, self.running, self.runner = args, running, runner
        self.latency: dict[str, dict[str, list[dict[str, Any]]]] = {m: {"direct": [], "skinflint": []} for m in MODES}
        self.saturation: list[dict[str, Any]] = []
        #: Per mode: each process's share of a core over the one-client runs, the machine's rest too.
        self.one_client_cpu: dict[str, dict[str, float]] = {}
        #: (seconds waited for a quiet machine, the rest of the machine's share of a core then)
        self.waits: list[tuple[float, float]] = []

    def wait_quiet(self) -> None:
        """Wait (up to ``--quiet-wait`` s) until the rest of the machine used under QUIET_SHARE of a
        core for a second; the time waited and the last share seen are kept in ``self.waits``."""
        started, share = time.monotonic(), 0.0
        while True:
            meter = CpuMeter(self.running.pids())
            time.sleep(1.0)
            share = meter.read(0.0)["others"]
            waited = time.monotonic() - started
            if share < QUIET_SHARE or waited >= self.args.quiet_wait:
                break
            if waited < 1.5:
                common.log(f"the rest of the machine uses {share:.0%} of a core: waiting up to "
                           f"{self.args.quiet_wait:g} s for it to quieten")
        self.waits.append((waited, share))
        if share >= QUIET_SHARE:
            common.log(f"WARNING: measuring with the rest of the machine at {share:.0%} of a core")

    def load(self, target: Target, connections: int, **limit: Any) -> LoadResult:
        self.running.stack.check_alive()
        if self.running.mock.poll() is not None:
            raise RuntimeError(f"the mock exited with code {self.running.mock.returncode}")
        return self.runner.run(run_load(target, connections, **limit))

    def warm_up(self) -> None:
        for mode in MODES:
            for target in targets(self.running, mode == "stream", self.args.chunks):
                for connections, limit in ((1, {"requests": 200}), (self.args.connections, {"duration_s": 1.0})):
                    result = self.load(target, connections, **limit)
                    if result.errors:
                        raise RuntimeError(f"{target.name} {mode}: {result.errors} of {result.requests} answers "
                                           f"wrong at warm-up, e.g. {next(iter(result.reasons))}")
        common.log("warmed up: every answer of both targets in both modes checked out")

    def one_client(self) -> None:
        args = self.args
        for mode in MODES:
            pair = targets(self.running, mode == "stream", args.chunks)
            cpu: dict[str, float] = {}
            wall = 0.0
            for k in range(args.slices):
                if args.quiet_wait > 0:
                    self.wait_quiet()
                for target in pair if k % 2 == 0 else pair[::-1]:
                    meter, started = CpuMeter(self.running.pids()), time.perf_counter()
                    result = self.load(target, 1, requests=args.per_slice)
                    wall += time.perf_counter() - started
                    for name, seconds in meter.read(result.cpu_s).items():
                        cpu[name] = cpu.get(name, 0.0) + seconds
                    self.latency[mode][target.name].append(result.as_dict())
                    common.log(f"one client, {mode:6} slice {k + 1}/{args.slices} {target.name:9}: "
                               f"{gateway_report.brief(result)}")
            self.one_client_cpu[mode] = {name: s / wall for name, s in cpu.items()}

    def saturate(self) -> None:
        args = self.args
        for r in range(args.rounds):
            for mode in MODES:
                pair = targets(self.running, mode == "stream", args.chunks)
                for target in pair if (r + MODES.index(mode)) % 2 == 0 else pair[::-1]:
                    self.saturation.append(self.measure(target, mode, r))

    def measure(self, target: Target, mode: str, round_no: int) -> dict[str, Any]:
        if self.args.quiet_wait > 0:
            self.wait_quiet()
        calls = mock_calls(self.running)
        meter = CpuMeter(self.running.pids())
        result = self.load(target, self.args.connections, duration_s=self.args.duration)
        cpu = meter.read(result.cpu_s)
        row = gateway_report.saturation_row(result, mode, round_no, cpu, mock_calls(self.running) - calls)
        common.log(f"saturation round {round_no + 1}/{self.args.rounds}, {mode:6} {target.name:9}: "
                   f"{gateway_report.brief(result)}; CPU " + ", ".join(
                       f"{name} {s / result.wall_s:.0%}" for name, s in cpu.items() if s > 0.01 * result.wall_s))
        return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.end_on_sigterm()
    out = common.run_dir("gateway")
    meta: dict[str, Any] = {"args": vars(args), "started": time.time(), "loadavg_start": os.getloadavg(),
                            "pipeline": ["infer"], "accounting": "off"}
    running: Running | None = None
    bench: GatewayBench | None = None

    def clean_up(complete: bool) -> None:
        if running is not None:
            common.log("stopping every process this run started")
            running.stop()
        meta.update(finished=time.time(), complete=complete, loadavg_end=os.getloadavg())
        common.save_json(out / "results.json", {"meta": meta, **({} if bench is None else {
            "latency": bench.latency, "one_client_cpu": bench.one_client_cpu, "saturation": bench.saturation,
            "quiet_waits": bench.waits})})

    with common.attempt(clean_up) as outcome, asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        common.log(f"starting the mock ({args.chunks} chunks a stream), nats-server, ingress (pipeline "
                   "['infer']: no cache, no classifier) and one upstream worker; no accounting service")
        running = start(out, args.chunks, service_env(args))
        bench = GatewayBench(args, running, runner)
        bench.warm_up()
        bench.one_client()
        bench.saturate()
    common.log(f"raw results: {out / 'results.json'}")
    if not outcome.complete or bench is None:
        return 1
    text, checks = gateway_report.report(bench.latency, bench.saturation, args, bench.one_client_cpu)
    print()
    print(text)
    print(load_line(meta))
    if bench.waits:
        busy = [share for _, share in bench.waits if share >= QUIET_SHARE]
        print(f"waited {sum(w for w, _ in bench.waits):.0f} s in all for a quiet machine; "
              f"{len(busy)} of {len(bench.waits)} measurements started with the rest of the machine busier than "
              f"{QUIET_SHARE:.0%} of a core" + (f" (up to {max(busy):.0%})" if busy else ""))
    return common.print_verdict(checks)


if __name__ == "__main__":
    sys.exit(main())
