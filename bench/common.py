"""What both benchmarks share: the run's folder and signals, the load, statistics and tables.

The engines under test and their settings are in ``targets``.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from services.stack import ROOT

API_KEY = "sk-skinflint-demo"
MODEL = "smollm2-135m"
BENCH_DIR = ROOT / "var" / "bench"

# Prompts that make SmolLM2 write at length, so that an answer reaches max_tokens on both engines:
# the OpenAI API has no ignore_eos (vLLM accepts it as an extra, skinflint refuses unknown fields),
# so equal work is obtained by asking for long answers and checking usage.completion_tokens.
PROMPTS = [
    "Write a detailed, multi-paragraph essay about the history of the printing press.",
    "Explain step by step how a refrigerator works, in at least 300 words.",
    "Describe a typical day in the life of a medieval blacksmith in great detail.",
    "Write a long story about a robot who learns to paint.",
    "Give a thorough explanation of how photosynthesis works, stage by stage.",
    "List and explain twenty practical tips for learning a new language.",
    "Write a comprehensive guide to planting and caring for a vegetable garden.",
    "Explain the causes and consequences of the French Revolution in detail.",
    "Describe the water cycle in detail, covering every stage and why it matters.",
    "Write a long letter to a friend describing a two-week trip through Japan.",
    "Explain how the internet works, from undersea cables to web pages, in detail.",
    "Write a detailed recipe for homemade bread, explaining the reason for every step.",
]


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def end_on_sigterm() -> None:
    """SIGTERM ends a run like Ctrl-C does: through the caller's finally, which stops every process."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def shield_cleanup() -> None:
    """Ignore further Ctrl-C and SIGTERM: a second one must not cut the clean-up short and leave
    engines behind (stopping takes up to a minute: services drain first)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@dataclass
class Outcome:
    """Whether a bench's run got to its end (``attempt`` sets it)."""

    complete: bool = False


@contextmanager
def attempt(clean_up: Callable[[bool], None]) -> Iterator[Outcome]:
    """The body of one bench run. A ``RuntimeError`` (a process that would not start, a target
    that failed) or Ctrl-C ends it with a log line instead of a traceback; whatever happens,
    further signals are then ignored (``shield_cleanup``) and ``clean_up(complete)`` runs: stop
    what the run started, save what it measured."""
    outcome = Outcome()
    try:
        yield outcome
        outcome.complete = True
    except RuntimeError as exc:
        log(f"FAILED: {exc}")
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        shield_cleanup()
        clean_up(outcome.complete)


def run_dir(name: str) -> Path:
    """A fresh folder for one run: var/bench/<name>-<timestamp>."""
    path = BENCH_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def save_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, default=str))


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024**2
    return math.nan


# --- load -----------------------------------------------------------------------------------------

@dataclass
class Call:
    """One chat completion as the client saw it."""

    index: int
    prompt: int
    status: int
    latency_ms: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    overhead_ms: float | None = None
    engine_ms: float | None = None
    text_sha1: str | None = None
    error: str | None = None
    #: skinflint only: its own time per phase of the path (``x-skinflint-phases-ms``)
    phases_ms: dict[str, float] | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


@dataclass
class LoadResult:
    concurrency: int
    max_tokens: int
    wall_s: float
    calls: list[Call] = field(default_factory=list)

    @property
    def ok_calls(self) -> list[Call]:
        return [c for c in self.calls if c.ok]

    @property
    def errors(self) -> list[Call]:
        return [c for c in self.calls if not c.ok]

    @property
    def output_tokens(self) -> int:
        return sum(c.completion_tokens or 0 for c in self.ok_calls)

    def as_dict(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "max_tokens": self.max_tokens, "wall_s": self.wall_s,
                "calls": [asdict(c) for c in self.calls]}


def make_client() -> httpx.AsyncClient:
    """One client for the whole run: enough pooled connections for the highest concurrency."""
    return httpx.AsyncClient(limits=httpx.Limits(max_connections=256, max_keepalive_connections=256),
                             timeout=httpx.Timeout(300.0),
                             headers={"Authorization": f"Bearer {API_KEY}"})


def chat_body(prompt: str, max_tokens: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0, "stream": False}


def _header_ms(response: httpx.Response, name: str) -> float | None:
    value = response.headers.get(name)
    return None if value is None else float(value)


def parse_phases(value: str | None) -> dict[str, float] | None:
    """``ingress_in=0.512,to_worker=1.020,...`` as a dict; None without the header."""
    if not value:
        return None
    return {name: float(ms) for name, ms in (part.split("=", 1) for part in value.split(","))}


async def one_call(client: httpx.AsyncClient, base_url: str, index: int, max_tokens: int) -> Call:
    prompt = index % len(PROMPTS)
    started = time.perf_counter()
    try:
        response = await client.post(f"{base_url}/v1/chat/completions",
                                     json=chat_body(PROMPTS[prompt], max_tokens))
    except httpx.HTTPError as exc:
        return Call(index, prompt, 0, (time.perf_counter() - started) * 1000,
                    error=f"{type(exc).__name__}: {exc}")
    latency_ms = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        return Call(index, prompt, response.status_code, latency_ms, error=response.text[:500])
    body = response.json()
    usage = body.get("usage") or {}
    text = body["choices"][0]["message"].get("content") or ""
    return Call(index, prompt, 200, latency_ms, usage.get("prompt_tokens"), usage.get("completion_tokens"),
                _header_ms(response, "x-skinflint-overhead-ms"), _header_ms(response, "x-skinflint-engine-ms"),
                hashlib.sha1(text.encode()).hexdigest()[:12],
                phases_ms=parse_phases(response.headers.get("x-skinflint-phases-ms")))


async def run_load(client: httpx.AsyncClient, base_url: str, concurrency: int, requests: int,
                   max_tokens: int, first_index: int = 0) -> LoadResult:
    """A closed loop: ``concurrency`` clients, each sending its next request when one returns,
    until ``requests`` have been sent, numbered from ``first_index``. Request i always uses prompt
    i mod len(PROMPTS)."""
    counter = itertools.count(first_index)
    calls: list[Call] = []

    async def client_loop() -> None:
        while (index := next(counter)) < first_index + requests:
            calls.append(await one_call(client, base_url, index, max_tokens))

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return LoadResult(concurrency, max_tokens, time.perf_counter() - started, sorted(calls, key=lambda c: c.index))


# --- statistics and tables ----------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


#: A bench's checks: (what, whether it held, the figure it was judged on).
Checks = Sequence[tuple[str, bool, str]]


def print_verdict(checks: Checks, *, label: str = "target", failed: str = "MISS", passed: str = "all targets met",
                  fails: str = "MISSED") -> int:
    """Print each check and a one-line verdict; the exit code (1 when any check failed)."""
    for name, ok, value in checks:
        print(f"{label}: {name}: {'ok' if ok else failed} ({value})")
    missed = [name for name, ok, _ in checks if not ok]
    print(f"verdict: {passed if not missed else fails + ': ' + '; '.join(missed)}")
    return 1 if missed else 0

