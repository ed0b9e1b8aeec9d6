"""The quality tools around the verifier: fold groups that keep near copies together, the
paraphrase set's shape, and the quality bench's arithmetic and verdict."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from bench.cache_quality import cosine_curve, rates, shortfalls, subset
from services.cache.quality import (
    PARAPHRASE_PAIRS,
    VAGUE_PAIRS,
    Featurised,
    Pair,
    near_duplicate_groups,
    read_pair_files,
)

pytestmark = pytest.mark.unit

CATEGORIES = {"paraphrase": True, "negation": False, "entity_swap": False, "number_date": False, "scope": False}


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_groups_join_shared_questions_and_near_copies() -> None:
    pairs = [Pair(a="q1", b="q2", same_answer=True), Pair(a="q2", b="q3", same_answer=False),
             Pair(a="q4", b="q5", same_answer=True), Pair(a="q6", b="q7", same_answer=False)]
    vectors = {"q1": unit(1, 0, 0), "q2": unit(1, 0.1, 0), "q3": unit(0, 1, 0), "q4": unit(0, 0, 1),
               "q5": unit(0, 0.2, 1), "q6": unit(1, 1, 0), "q7": unit(1, 1, 0.05)}
    groups = near_duplicate_groups(pairs, vectors, near=0.99)
    assert groups[0] == groups[1]  # q2 is in both pairs
    # q6 ~ q7 joins only the last pair's own texts; q4/q5 are 0.98 apart: their own pair.
    assert len({groups[0], groups[2], groups[3]}) == 3
    vectors["q6"] = unit(0.05, 0.05, 1)  # now a near copy of q4: the last two pairs share a fold
    groups = near_duplicate_groups(pairs, vectors, near=0.99)
    assert groups[2] == groups[3] != groups[0]


def test_paraphrase_set_shape() -> None:
    """60 prompts from each source, each with one paraphrase and one hard negative; labels fit
    their category; the negative is never the prompt itself."""
    rows = [json.loads(line) for line in PARAPHRASE_PAIRS.read_text().splitlines() if line.strip()]
    assert len(rows) == 360
    per_source = Counter(r["source"] for r in rows)
    assert set(per_source.values()) == {2}
    assert Counter(s.split(":")[0] for s in per_source) == {"mtbench": 60, "gsm8k": 60, "mmlu": 60}
    for r in rows:
        assert CATEGORIES[r["category"]] is r["same_answer"], r
        assert r["a"].strip() and r["b"].strip() and r["a"] != r["b"]
    kinds = {(r["source"], r["same_answer"]) for r in rows}
    assert len(kinds) == 360
    pairs, digests = read_pair_files([PARAPHRASE_PAIRS])
    assert len(pairs) == 360 and len(digests[0]) == 64


def _data(same: list[bool], categories: list[str]) -> Featurised:
    n = len(same)
    return Featurised(x=np.arange(n, dtype=float)[:, None], same=np.array(same), cosine=np.linspace(0, 1, n),
                      groups=[str(i) for i in range(n)], categories=categories)


def test_rates_and_shortfalls() -> None:
    data = _data([True] * 5 + [False] * 4, ["p"] * 5 + ["neg", "neg", "num", "num"])
    accepted = np.array([True, True, True, False, False, True, False, False, False])
    r = rates(data, accepted)
    assert r.hit == pytest.approx(0.6) and r.false_hit == pytest.approx(0.25)
    assert r.worst_category == "neg" and r.worst_category_false_hit == pytest.approx(0.5)
    problems = shortfalls("set", r)
    assert any("false-hit rate 25.0%" in p for p in problems)
    assert any("neg false-hit rate 50.0%" in p for p in problems)
    assert not any("hit rate 60.0%" in p for p in problems)  # exactly 60% meets the target
    clean = rates(data, np.array([True] * 4 + [False] * 5))
    assert shortfalls("set", clean) == []


def test_subset_keeps_rows_in_step() -> None:
    data = _data([True, False, True], ["p", "n", "p"])
    part = subset(data, np.array([False, True, True]))
    assert part.same.tolist() == [False, True] and part.categories == ["n", "p"] and part.groups == ["1", "2"]
    assert part.x[:, 0].tolist() == [1.0, 2.0]


def test_cosine_curve_runs_from_nothing_to_everything() -> None:
    cosine = np.array([0.9, 0.8, 0.7, 0.6])
    same = np.array([True, False, True, False])
    false_hits, hits = cosine_curve(cosine, same)
    assert (false_hits[0], hits[0]) == (0.0, 0.0) and (false_hits[-1], hits[-1]) == (1.0, 1.0)
    assert hits == [0.0, 0.5, 0.5, 1.0, 1.0] and false_hits == [0.0, 0.0, 0.5, 0.5, 1.0]


def test_vague_set_shape() -> None:
    """Short, vague requests, hand-written: pairs of another task or topic and true rewordings, no
    pair twice and no text paired with itself."""
    rows = [json.loads(line) for line in VAGUE_PAIRS.read_text().splitlines() if line.strip()]
    assert Counter(r["same_answer"] for r in rows) == {False: 93, True: 50}
    assert {r["category"] for r in rows} == {"vague"}
    assert len({(r["a"], r["b"]) for r in rows}) == len(rows)
    for r in rows:
        assert r["a"].strip() and r["b"].strip() and r["a"] != r["b"]
