"""The ``skinflint`` command, as an operator runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PAIRS = [
    {"a": "What is the capital of France?", "b": "what's the capital of France", "same_answer": True,
     "category": "paraphrase"},
    {"a": "How many days are in a week?", "b": "How many days are in a month?", "same_answer": False,
     "category": "number_date"},
    {"a": "Is Python compiled?", "b": "Is Python not compiled?", "same_answer": False, "category": "negation"},
    {"a": "Who wrote Hamlet?", "b": "Who wrote Macbeth?", "same_answer": False, "category": "entity_swap"},
]


def test_cache_score_prints_hit_and_false_hit_rates_per_category(tmp_path: Path) -> None:
    file = tmp_path / "pairs.jsonl"
    file.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    done = subprocess.run([sys.executable, "-m", "services.cli", "cache", "score", str(file)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for category in ("paraphrase", "number_date", "negation", "entity_swap"):
        assert category in done.stdout
    assert "cosine > 0.8" in done.stdout


def test_cache_score_names_a_missing_file(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "services.cli", "cache", "score", str(tmp_path / "nope.jsonl")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "nope.jsonl" in done.stderr


def test_purge_without_a_running_ingress_says_so() -> None:
    done = subprocess.run([sys.executable, "-m", "services.cli", "cache", "purge", "--url", "http://127.0.0.1:9",
                           "--api-key", "sk-x"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "did not answer" in done.stderr


def test_route_prints_the_tier_and_score_the_configured_router_picks_per_line(tmp_path: Path) -> None:
    file = tmp_path / "prompts.jsonl"
    file.write_text(json.dumps({"prompt": "Can you recommend a good book to read this weekend?"}) + "\n"
                    + json.dumps({"prompt": "Find the number of ordered pairs (x, y) of integers with "
                                            "-100 <= x, y <= 100 such that 12x^2 - xy - 6y^2 = 0."}) + "\n"
                    + "not json\n"
                    + json.dumps({"messages": [{"role": "user", "content": "Hello there"}]}) + "\n")
    done = subprocess.run([sys.executable, "-m", "services.cli", "route", str(file), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr  # one line could not be read
    assert "line 3: not JSON" in done.stderr
    decisions = [json.loads(line) for line in done.stdout.splitlines()]
    assert [d["line"] for d in decisions] == [1, 2, 4]
    assert [d["tier"] for d in decisions] == ["small", "large", "small"]
    assert all(d["policy"] == "learned" and 0 <= d["score"] <= 1 for d in decisions)
    assert "3 prompts routed" in done.stderr


def test_router_eval_reports_routellm_metrics_against_the_baselines(tmp_path: Path) -> None:
    png = tmp_path / "curve.png"
    done = subprocess.run([sys.executable, "-m", "services.cli", "router", "eval", "--png", str(png)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("APGR", "CPT", "learned", "random", "length"):
        assert name in done.stdout
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
