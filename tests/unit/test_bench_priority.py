"""The priority bench's plain logic: block order, arrivals, the steady window and the two ratios."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator

import pytest

from bench import priority
from bench import priority_stats as ps
from bench.priority_engine import saturate
from services.worker.engine import EngineStep

pytestmark = pytest.mark.unit


def test_blocks_alternate_abba_so_neither_kind_always_comes_first() -> None:
    order = ps.block_order(3)
    assert order == [(0, ps.IDLE), (0, ps.BULK), (1, ps.BULK), (1, ps.IDLE), (2, ps.IDLE), (2, ps.BULK)]
    assert sum(1 for _, kind in order if kind == ps.BULK) == 3


def test_every_block_gets_the_same_arrivals() -> None:
    a = ps.arrival_offsets(200, 0.3, seed=7)
    assert a == ps.arrival_offsets(200, 0.3, seed=7)
    assert a[0] == 0 and all(x < y for x, y in itertools.pairwise(a))
    assert 0.2 < a[-1] / 199 < 0.4  # mean gap near 0.3 s
    assert ps.arrival_offsets(3, 0.0, seed=1) == [0.0, 0.0, 0.0]


def test_top_up_publishes_only_what_is_missing() -> None:
    assert ps.top_up(pending=3, want=28) == 25
    assert ps.top_up(pending=40, want=28) == 0


def test_a_bulk_blocks_batch_outlasts_the_block() -> None:
    assert ps.batch_lines(500.0, 64, seconds=72, bulk_slots=28) == 1125  # 2 x 7.8 items/s x 72 s
    assert ps.batch_lines(10.0, 64, seconds=72, bulk_slots=28) == 112  # four waves at the least
    assert ps.batch_lines(math.nan, 64, seconds=72, bulk_slots=28) == 112


def test_steady_rate_leaves_out_ramp_up_and_tail() -> None:
    # Ten completions 1 s apart, 10 tokens each, but a slow first and a slow last one.
    finishes = [(0.0, 10)] + [(10.0 + i, 10) for i in range(8)] + [(100.0, 10)]
    rate = ps.steady_rate(finishes, edge=2)
    # The window runs from the 2nd completion (t=10) to the 2nd last (t=16): six completions inside.
    assert (rate.tokens, rate.seconds, rate.completions) == (60, 6.0, 6)
    assert rate.per_s == 10.0


def test_steady_window_is_the_rates_window() -> None:
    times = [0.0, *(10.0 + i for i in range(8)), 100.0]
    assert ps.steady_window(list(reversed(times)), edge=2) == (10.0, 16.0)
    with pytest.raises(ValueError, match="no steady window"):
        ps.steady_window([1.0, 2.0], edge=1)


class FakeEngine:
    """Records how many requests it runs at once; answers ``tokens`` tokens, one a step."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.running = self.most = 0
        self.seen: list[tuple[str, list[int], int, int]] = []

    def render(self, messages: list[object]) -> list[int]:
        return [len(str(messages))]

    async def stream(self, request_id: str, prompt: list[int], params: object,
                     priority: int) -> AsyncIterator[EngineStep]:
        self.running += 1
        self.most = max(self.most, self.running)
        self.seen.append((request_id, prompt, getattr(params, "max_tokens", 0), priority))
        try:
            for i in range(1, self.tokens + 1):
                await asyncio.sleep(0)
                yield EngineStep("x", i == self.tokens, "length" if i == self.tokens else None, len(prompt), 0, i)
        finally:
            self.running -= 1


def test_the_baseline_keeps_every_slot_busy_with_the_workers_bulk_requests() -> None:
    engine = FakeEngine(tokens=5)
    result = asyncio.run(saturate(engine, n=20, concurrency=4, max_tokens=5, label="r0"))
    assert engine.most == 4  # as many at once as it was asked, never more
    assert [tok for _, tok in result["finishes"]] == [5] * 20 and result["errors"] == []
    assert sorted(rid for rid, *_ in engine.seen) == sorted(f"r0-{i}" for i in range(20))
    assert {(max_tokens, prio) for _, _, max_tokens, prio in engine.seen} == {(5, 10)}  # bulk priority


def test_steady_rate_needs_a_window() -> None:
    with pytest.raises(ValueError, match="no steady window"):
        ps.steady_rate([(float(i), 1) for i in range(5)], edge=2)
    assert math.isnan(ps.Rate(0, 0.0, 0).per_s)


def test_throughput_ratio_pools_rounds_and_has_an_interval() -> None:
    rounds = [(ps.Rate(900, 10.0, 9), ps.Rate(1000, 10.0, 10)), (ps.Rate(700, 10.0, 7), ps.Rate(1000, 10.0, 10))]
    assert ps.throughput_ratio(rounds) == pytest.approx(0.8)
    lo, hi = ps.throughput_interval(rounds)
    assert 0.7 <= lo <= 0.8 <= hi <= 0.9


def test_ttft_ratio_compares_pooled_p95() -> None:
    idle = [float(v) for v in range(1, 101)]
    pairs = [(idle, [2 * v for v in idle])]
    assert ps.ttft_ratio(pairs) == pytest.approx(2.0)
    assert ps.ttft_ratio(pairs, 50) == pytest.approx(2.0)
    assert ps.ttft_interval(pairs) == pytest.approx((2.0, 2.0))
    assert math.isnan(ps.ttft_ratio([([], [1.0])]))


def test_busy_share_counts_heartbeats_with_every_bulk_slot_taken() -> None:
    assert ps.busy_share([28, 28, 27, 28], full=28) == 0.75
    assert math.isnan(ps.busy_share([], full=28))


def test_summary_and_verdict_from_a_saved_run(capsys: pytest.CaptureFixture[str]) -> None:
    args = priority.parse_args(["--rounds", "1", "--pairs", "1", "--interactive-reserve", "4"])
    rate = {"tokens": 800, "seconds": 2.0, "completions": 10}
    data = {
        "throughput": [
            {"who": "engine", "round": 0, "errors": 0, "completion_tokens": [64] * 3,
             "rate": {**rate, "tokens": 1000}},
            {"who": "skinflint", "round": 0, "errors": 0, "completion_tokens": [64] * 3, "rate": rate,
             "inflight_bulk": [28, 28, 28, 27]},
        ],
        "ttft": [
            {"pair": 0, "kind": ps.IDLE, "inflight_bulk": [0], "calls": [{"ok": True, "ttft_ms": 40.0}] * 20},
            {"pair": 0, "kind": ps.BULK, "inflight_bulk": [28, 27], "bulk_waiting": [30, 0, 12],
             "calls": [{"ok": True, "ttft_ms": 100.0}] * 19 + [{"ok": False, "error": "x"}]},
        ],
    }
    summary = priority.summarise(args, data)
    assert summary["tps_ratio"] == pytest.approx(0.8)
    assert summary["ttft_ratio"] == pytest.approx(2.5)
    assert (summary["chat_errors"], summary["busy_share"], summary["inflight_min"]) == (1, 0.5, 27)
    _, code = priority.report(args, summary)
    out = capsys.readouterr().out
    assert code == 1
    assert "MISS (2.50x)" in out and "ok (80.0%)" in out
    # A bulk block whose backlog ran out did not measure chat beside bulk work: that is a miss too.
    assert "the bulk backlog never ran out during bulk blocks: MISS (fewest waiting: 0)" in out
    # Three of four heartbeats in the throughput run's steady window had every bulk slot taken.
    assert summary["tp_busy_share"] == 0.75
    assert "of the steady windows' heartbeats: MISS (75%)" in out
