"""What the cache benchmarks share: intervals for percentiles, the stack they run, one request.

Statistics are plain functions (unit tested); the stack is started through ``services.stack``
the way a user starts skinflint, with two ingresses on one bus: one whose pipeline is
``["cache", "infer"]`` (the default) and one with ``["infer"]`` only (the cache switched off),
so both see the same worker, bus and machine in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from services.stack import ROOT, Stack, free_port, wait_for_port

try:  # `python -m bench.<name>` from the repo root
    from bench.common import MODEL, Outcome, attempt, log, percentile, run_dir, save_json
except ModuleNotFoundError:  # `python bench/<name>.py`: bench/ itself is on the path
    from common import MODEL, Outcome, attempt, log, percentile, run_dir, save_json  # type: ignore[no-redef]

T = TypeVar("T")

#: The benches' own tenants (added to the shipped tenants file in the run's folder): limits high
#: enough that a one-client loop of cache hits (hundreds a second) never meets a 429.
BENCH_KEY = "sk-skinflint-bench-cache"
BASELINE_KEY = "sk-skinflint-bench-nocache"
BENCH_TENANT = "bench-cache"
BASELINE_TENANT = "bench-nocache"


# --- statistics ------------------------------------------------------------------------------

def binomial_cdf(n: int, p: float) -> list[float]:
    """``[P(B <= k) for k in 0..n]`` for B ~ Binomial(n, p), from log-space terms."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    log_p, log_q, base = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    cdf, total = [], 0.0
    for k in range(n + 1):
        total += math.exp(base - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q)
        cdf.append(min(total, 1.0))
    return cdf


def quantile_interval(values: Sequence[float], q: float, level: float = 0.90) -> tuple[float, float]:
    """A distribution-free ``level`` interval for the ``q``-th percentile, from order statistics.

    The number of samples below the true percentile is Binomial(n, q/100); the interval runs from
    the l-th to the u-th smallest value (1-based), with l the largest rank such that
    P(B <= l - 1) <= (1 - level)/2 and u the smallest such that P(B >= u) <= (1 - level)/2, so it
    covers the true percentile with probability at least ``level``. A side the sample is too
    small to bound is NaN (a p99 from fewer than ~300 values has no upper bound at 90%)."""
    if not 0 < q < 100 or not 0 < level < 1:
        raise ValueError(f"q must be in (0, 100) and level in (0, 1), got {q}, {level}")
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return math.nan, math.nan
    cdf, tail = binomial_cdf(n, q / 100), (1 - level) / 2
    lows = [rank for rank in range(1, n + 1) if cdf[rank - 1] <= tail]
    highs = [rank for rank in range(1, n + 1) if cdf[rank - 1] >= 1 - tail]
    return (ordered[lows[-1] - 1] if lows else math.nan), (ordered[highs[0] - 1] if highs else math.nan)


def bootstrap_interval(groups: Sequence[T], statistic: Callable[[Sequence[T]], float], *, draws: int = 1000,
                       level: float = 0.90, seed: int = 0) -> tuple[float, float]:
    """A percentile-bootstrap ``level`` interval of ``statistic``: each draw takes as many groups
    as there are, with replacement. Groups are the units that share noise (a round of
    interleaved requests), so a burst of load on the machine moves a whole group."""
    if not groups:
        return math.nan, math.nan
    rng = random.Random(seed)
    stats = sorted(statistic([groups[rng.randrange(len(groups))] for _ in groups]) for _ in range(draws))
    tail = (1 - level) / 2 * 100
    return percentile(stats, tail), percentile(stats, 100 - tail)


def entries_within(points: Sequence[tuple[int, float]], budget_ms: float) -> tuple[float, str]:
    """Up to how many entries the lookup stays within ``budget_ms``, from (entries, ms) measured
    at growing sizes: interpolated between the sizes that bracket the budget, extrapolated from
    the two smallest when even the smallest is over it. Returns (entries, how it was found):
    0 when the budget is missed at any size, inf when the largest size is still within it."""
    points = sorted(points)
    if budget_ms <= 0:
        return 0.0, "the budget is gone before any search"
    if all(ms <= budget_ms for _, ms in points):
        return math.inf, f"within budget at every size measured (up to {points[-1][0]:,})"
    for (n0, ms0), (n1, ms1) in itertools.pairwise(points):
        if ms0 <= budget_ms < ms1:
            return n0 + (budget_ms - ms0) / (ms1 - ms0) * (n1 - n0), f"interpolated between {n0:,} and {n1:,}"
    n0, ms0 = points[0]
    if len(points) < 2 or points[1][1] <= ms0:
        return 0.0, f"over budget at {n0:,}, the smallest size measured"
    slope = (points[1][1] - ms0) / (points[1][0] - n0)
    return max(0.0, n0 - (ms0 - budget_ms) / slope), f"extrapolated below {n0:,}, the smallest size measured"


def interval_text(bounds: tuple[float, float], digits: int = 2) -> str:
    low, high = bounds
    show = [("?" if math.isnan(v) else f"{v:,.{digits}f}") for v in (low, high)]
    return f"{show[0]} to {show[1]}"


def load_line(meta: dict[str, Any]) -> str:
    start, end = meta["loadavg_start"], meta["loadavg_end"]
    return (f"machine: {os.cpu_count()} CPUs; load average (1, 5, 15 min) at start {start[0]:.2f} {start[1]:.2f} "
            f"{start[2]:.2f}, at end {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}")


# --- the stack -------------------------------------------------------------------------------

def write_tenants_file(path: Path) -> Path:
    """The shipped tenants plus the benches' two (cache on and the no-cache baseline), whose usage
    the accounting report then shows apart."""
    config = yaml.safe_load((ROOT / "infra" / "config" / "tenants.yaml").read_text())
    for name, key in ((BENCH_TENANT, BENCH_KEY), (BASELINE_TENANT, BASELINE_KEY)):
        config["tenants"].append({"name": name, "keys": [{"id": f"{name}-key", "key": key}],
                                  "requests_per_minute": 1_000_000, "burst": 100_000, "max_concurrent": 1024})
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class CacheStack:
    """A running skinflint with the cache, and a second ingress without it, on the same bus."""

    stack: Stack
    cached_url: str
    uncached_url: str
    cache_metrics_url: str

    def stop(self) -> None:
        self.stack.stop()


class BenchRun:
    """One run of a cache bench: its folder (``out``), its ``meta`` (args, start and end times,
    load averages) and the stack it started, if any. ``attempt`` wraps the run's body in
    ``common.attempt``; cleaning up stops the stack and saves results.json: ``meta`` first, then
    what ``results()`` returns at that moment (whatever the run got to)."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.out = run_dir(name)
        self.meta: dict[str, Any] = {"args": vars(args), "started": time.time(), "loadavg_start": os.getloadavg()}
        self.stack: CacheStack | None = None

    def clean_up(self, complete: bool, results: Callable[[], dict[str, Any]]) -> None:
        if self.stack is not None:
            log("stopping every process this run started")
            self.stack.stop()
        self.meta.update(finished=time.time(), complete=complete, loadavg_end=os.getloadavg())
        save_json(self.out / "results.json", {"meta": self.meta, **results()})

    @contextmanager
    def attempt(self, results: Callable[[], dict[str, Any]]) -> Iterator[Outcome]:
        with attempt(lambda complete: self.clean_up(complete, results)) as outcome:
            yield outcome


def wait_http_ok(url: str, stack: Stack, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{what} was not ready within {timeout_s:.0f} s; see {stack.var_dir / 'log'}")


def start_cache_stack(var_dir: Path, *, worker_env: dict[str, str] | None = None, real_engine: bool = False,
                      accounting: bool = False, cache_env: dict[str, str] | None = None,
                      ready_timeout_s: float = 120) -> CacheStack:
    """nats-server, (accounting,) the cache stage, one worker and two ingresses, as processes.

    The worker is the real worker service with the fake zero-latency engine
    (``tests.support.fake_worker``), or with vLLM when ``real_engine``. The cache keeps its
    Qdrant local-mode folder in ``var_dir/qdrant``."""
    var_dir.mkdir(parents=True, exist_ok=True)
    tenants = write_tenants_file(var_dir / "tenants.yaml")
    stack = Stack(var_dir=var_dir, env={"SF_TENANTS_FILE": str(tenants)})
    try:
        stack.start_nats(free_port())
        if accounting:
            stack.start_service("accounting", "services.accounting")
        cache = stack.start_service("cache", "services.cache",
                                    {"SF_QDRANT_PATH": str(var_dir / "qdrant"), **(cache_env or {})})
        if real_engine:
            stack.start_service("worker", "services.worker", worker_env)
        else:
            stack.start_service("worker", "tests.support.fake_worker",
                                {"SF_FAKE_SECONDS_PER_TOKEN": "0", **(worker_env or {})})
        cached_port = stack.start_ingress(free_port())
        uncached_port = free_port()
        uncached = stack.start_service("ingress-nocache", "services.ingress", {
            "SF_PORT": str(uncached_port), "SF_PIPELINE": '["infer"]', "SF_OPTIONAL_STAGES": "[]"})
        wait_for_port(uncached_port, uncached.process, 30)
        stack.wait_ready(timeout_s=ready_timeout_s if not real_engine else 600, what="the worker")
        wait_http_ok(f"http://127.0.0.1:{uncached_port}/readyz", stack, "the no-cache ingress", ready_timeout_s)
        wait_http_ok(f"http://127.0.0.1:{cache.health_port}/readyz", stack, "the cache stage", ready_timeout_s)
    except BaseException:
        stack.stop()
        raise
    return CacheStack(stack, f"http://127.0.0.1:{cached_port}", f"http://127.0.0.1:{uncached_port}",
                      f"http://127.0.0.1:{cache.health_port}/metrics")


# --- requests --------------------------------------------------------------------------------

def chat_body(prompt: str, max_tokens: int) -> dict[str, Any]:
    """A single-turn chat request at temperature 0 (only greedy answers are cached by default)."""
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": False}


@dataclass
class Reply:
    """One chat completion as the client saw it."""

    status: int
    ms: float
    #: ``x-skinflint-cache`` (None through the ingress without the cache stage).
    kind: str | None = None
    similarity: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None


async def ask(client: httpx.AsyncClient, url: str, body: dict[str, Any],
              headers: dict[str, str] | None = None) -> Reply:
    started = time.perf_counter()
    try:
        response = await client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
    except httpx.HTTPError as exc:
        return Reply(0, (time.perf_counter() - started) * 1000, error=f"{type(exc).__name__}: {exc}")
    ms = (time.perf_counter() - started) * 1000
    kind = response.headers.get("x-skinflint-cache")
    if response.status_code != 200:
        try:
            error = response.json()["error"].get("code") or response.text[:200]
        except (ValueError, KeyError, TypeError, AttributeError):
            error = response.text[:200]
        return Reply(response.status_code, ms, kind, error=str(error))
    data = response.json()
    similarity = response.headers.get("x-skinflint-cache-similarity")
    usage = data.get("usage") or {}
    choice = data["choices"][0]
    return Reply(200, ms, kind, float(similarity) if similarity else None, usage.get("prompt_tokens", 0),
                 usage.get("completion_tokens", 0), choice["message"].get("content") or "", choice.get("finish_reason"))


def client_for(key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(300.0), headers={"Authorization": f"Bearer {key}"},
                             limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))


# --- the cache's own metrics -----------------------------------------------------------------

_LOOKUP_LINE = re.compile(r'^skinflint_cache_lookup_seconds_(sum|count)\{kind="(\w+)"\} ([0-9.eE+-]+)$')


def lookup_totals(metrics_text: str) -> dict[str, tuple[float, float]]:
    """``skinflint_cache_lookup_seconds`` per kind (exact, embed, semantic, total) as (sum in
    seconds, count), from a Prometheus text exposition."""
    found: dict[str, dict[str, float]] = {}
    for line in metrics_text.splitlines():
        match = _LOOKUP_LINE.match(line.strip())
        if match:
            found.setdefault(match.group(2), {})[match.group(1)] = float(match.group(3))
    return {kind: (v.get("sum", 0.0), v.get("count", 0.0)) for kind, v in found.items()}


def lookup_means_ms(before: dict[str, tuple[float, float]],
                    after: dict[str, tuple[float, float]]) -> dict[str, tuple[float, int]]:
    """Mean ms and count per kind of step between two scrapes."""
    out = {}
    for kind, (total, count) in after.items():
        total0, count0 = before.get(kind, (0.0, 0.0))
        n = round(count - count0)
        out[kind] = ((total - total0) / n * 1000 if n else math.nan, n)
    return out
