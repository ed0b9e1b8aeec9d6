"""The overhead bench's statistics: the p99 ratio's interval, and re-reporting a saved run."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from bench import overhead
from bench.overhead_results import Results

pytestmark = pytest.mark.unit


def _run(engine: str, round_no: int, first: int, latencies: list[float]) -> dict[str, object]:
    calls = [{"index": first + i, "prompt": 0, "status": 200, "latency_ms": ms, "prompt_tokens": 10,
              "completion_tokens": 1, "overhead_ms": 2.0 if engine == "skinflint" else None}
             for i, ms in enumerate(latencies)]
    return {"engine": engine, "round": round_no, "concurrency": 1, "max_tokens": 1, "wall_s": 1.0,
            "calls": calls}


def _results(runs: list[dict[str, object]]) -> Results:
    return Results(cells=[(1, 1)], rounds=2, runs=runs)  # type: ignore[arg-type]


def _slices(factor: float) -> list[dict[str, object]]:
    rng = random.Random(7)
    runs = []
    for round_no in range(2):
        for first in (0, 50, 100):
            base = [rng.uniform(40, 60) for _ in range(50)]
            runs.append(_run("vllm", round_no, first, base))
            runs.append(_run("skinflint", round_no, first, [x * factor for x in base]))
    return runs


def test_the_interval_brackets_a_uniform_slowdown() -> None:
    low, high = _results(_slices(1.2)).p99_ratio_interval((1, 1))
    assert 1.1 < low <= 1.2 + 1e-9
    assert 1.2 - 1e-9 <= high < 1.3


def test_slices_measured_on_one_engine_only_give_no_interval() -> None:
    runs = [r for r in _slices(1.0) if r["engine"] == "skinflint"]
    assert all(math.isnan(x) for x in _results(runs).p99_ratio_interval((1, 1)))


def test_a_saved_run_is_reported_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "results.json"
    meta = {"args": {"rounds": 2, "quick": False}, "complete": True,
            "idle_cpu_s": {"vllm": 1.0}, "idle_wall_s": {"vllm": 100.0}, "engine_config": {}}
    path.write_text(json.dumps({"meta": meta, "summary": [], "runs": _slices(1.5)}))
    assert overhead.report_saved(path) == 0
    out = capsys.readouterr().out
    assert "p99 ratio skinflint/vLLM <= 1.10 in every cell: MISS" in out
    assert "1.500" in out  # the p99 ratio of a uniform 1.5x slowdown


def test_cells_are_chosen_by_concurrency_and_max_tokens() -> None:
    assert overhead.parse_args(["--cells", "32x1, 1x1"]).cells == [(1, 1), (32, 1)]
    assert overhead.parse_args([]).cells is None  # every cell
    for bad in ("2x1", "1x2", "1-1", "x1", ""):
        with pytest.raises(SystemExit):
            overhead.parse_args(["--cells", bad])


def test_a_partial_run_is_judged_on_its_cells_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "results.json"
    meta = {"args": {"rounds": 2, "quick": False, "cells": [[1, 1]]}, "complete": True,
            "idle_cpu_s": {}, "idle_wall_s": {}, "engine_config": {}}
    path.write_text(json.dumps({"meta": meta, "summary": [], "runs": _slices(1.0)}))
    assert overhead.report_saved(path) == 0
    out = capsys.readouterr().out
    assert "in every cell: ok" in out
    assert "partial run: not measured c=1 max_tokens=64, c=8 max_tokens=1" in out
    assert "max_tokens=64: " not in out  # the c=1 verdict names only the measured cell
