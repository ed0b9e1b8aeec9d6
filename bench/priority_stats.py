"""The priority bench's plain logic: block order, arrivals, steady-state rates and the two ratios.

No I/O here (unit tested in tests/unit/test_bench_priority.py); ``bench/priority.py`` measures.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

try:  # `python -m bench.priority` from the repo root
    from bench.cache_common import bootstrap_interval
    from bench.common import percentile
except ModuleNotFoundError:  # `python bench/priority.py`: bench/ itself is on the path
    from cache_common import bootstrap_interval  # type: ignore[no-redef]
    from common import percentile  # type: ignore[no-redef]

IDLE = "idle"  # chat alone
BULK = "bulk"  # chat while a bulk backlog fills every bulk slot


def block_order(pairs: int) -> list[tuple[int, str]]:
    """(pair, kind) for ``pairs`` pairs of TTFT blocks, ABBA: idle first in even pairs, bulk first
    in odd ones, so neither kind always runs right after warm-up or right after a drain."""
    order: list[tuple[int, str]] = []
    for pair in range(pairs):
        kinds = (IDLE, BULK) if pair % 2 == 0 else (BULK, IDLE)
        order += [(pair, kind) for kind in kinds]
    return order


def arrival_offsets(n: int, mean_gap_s: float, seed: int) -> list[float]:
    """Seconds from a block's start at which its ``n`` chat requests are sent: a Poisson process
    (exponential gaps, mean ``mean_gap_s``), the first at 0. The same seed gives every block the
    same schedule, so both kinds see identical arrivals."""
    rng = random.Random(seed)
    offsets, at = [], 0.0
    for _ in range(n):
        offsets.append(at)
        at += rng.expovariate(1 / mean_gap_s) if mean_gap_s > 0 else 0.0
    return offsets


def top_up(pending: int, want: int) -> int:
    """How many bulk tasks to publish so that ``want`` wait beyond the ones running."""
    return max(0, want - pending)


def batch_lines(tokens_per_s: float, max_tokens: int, seconds: float, bulk_slots: int) -> int:
    """Lines of a batch that keeps the bulk slots busy for ``seconds``: twice what the measured
    bulk rate would get through in that time, and at least four waves of slots."""
    if not tokens_per_s > 0:
        return 4 * bulk_slots
    return max(4 * bulk_slots, math.ceil(2 * tokens_per_s / max_tokens * seconds))


@dataclass(frozen=True)
class Rate:
    """Output tokens counted over a window of completions, and the window's length."""

    tokens: int
    seconds: float
    completions: int

    @property
    def per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else math.nan


def steady_rate(finishes: Sequence[tuple[float, int]], edge: int) -> Rate:
    """Output tokens/s in the steady state of a backlog's run, from (finish time, completion
    tokens) of each request. The window runs from the ``edge``-th completion to the
    ``edge``-th last: the first ``edge`` requests include the ramp-up (every slot prefilling
    at once) and the last ``edge`` the tail (slots emptying as the backlog runs out). Tokens
    are those of the completions inside the window (after its first, up to its last)."""
    ordered = sorted(finishes)
    n = len(ordered)
    if edge < 1 or n < 2 * edge + 2:
        raise ValueError(f"{n} completions leave no steady window with edge {edge} (need {2 * edge + 2})")
    first, last = edge - 1, n - edge - 1
    tokens = sum(tokens for _, tokens in ordered[first + 1:last + 1])
    return Rate(tokens, ordered[last][0] - ordered[first][0], last - first)


def steady_window(finish_times: Sequence[float], edge: int) -> tuple[float, float]:
    """The (start, end) times of ``steady_rate``'s window: the ``edge``-th and ``edge``-th last finish."""
    ordered = sorted(finish_times)
    if edge < 1 or len(ordered) < 2 * edge + 2:
        raise ValueError(f"{len(ordered)} completions leave no steady window with edge {edge} (need {2 * edge + 2})")
    return ordered[edge - 1], ordered[len(ordered) - edge - 1]


def pooled_rate(rates: Sequence[Rate]) -> float:
    tokens, seconds = sum(r.tokens for r in rates), sum(r.seconds for r in rates)
    return tokens / seconds if seconds > 0 else math.nan


def throughput_ratio(rounds: Sequence[tuple[Rate, Rate]]) -> float:
    """Pooled tokens/s through skinflint over pooled tokens/s of the engine alone; each round is
    (skinflint's rate, the engine's rate)."""
    return pooled_rate([s for s, _ in rounds]) / pooled_rate([e for _, e in rounds])


def throughput_interval(rounds: Sequence[tuple[Rate, Rate]], seed: int = 0) -> tuple[float, float]:
    """90% bootstrap interval of ``throughput_ratio`` over rounds (each a pair measured minutes apart)."""
    return bootstrap_interval(list(rounds), throughput_ratio, seed=seed)


#: A pair of TTFT blocks: (TTFTs of the idle block, TTFTs of the bulk block), in ms.
BlockPair = tuple[Sequence[float], Sequence[float]]


def ttft_ratio(pairs: Sequence[BlockPair], q: float = 95) -> float:
    """The pooled q-th percentile of TTFT with bulk over the one without."""
    idle = [v for a, _ in pairs for v in a]
    bulk = [v for _, b in pairs for v in b]
    base = percentile(idle, q)
    return percentile(bulk, q) / base if base and base > 0 else math.nan


def ttft_interval(pairs: Sequence[BlockPair], q: float = 95, seed: int = 0) -> tuple[float, float]:
    """90% bootstrap interval of ``ttft_ratio`` over block pairs: a pair's two blocks ran seconds
    apart, so a disturbance of the machine lasting seconds moves both together."""
    return bootstrap_interval(list(pairs), lambda drawn: ttft_ratio(drawn, q), seed=seed)


def busy_share(samples: Sequence[int], full: int) -> float:
    """Share of heartbeat samples in which all ``full`` bulk slots were taken (NaN without samples)."""
    return sum(1 for s in samples if s >= full) / len(samples) if samples else math.nan
