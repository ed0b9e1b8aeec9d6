"""The cache benches' plain helpers: percentile intervals, the bootstrap, the ShareGPT reader, the
independent check of semantic hits, and reading the cache's lookup metrics."""

from __future__ import annotations

import io
import json
import math
import random
import statistics

import pytest

from bench import cache_common as cc
from bench import replay_report as replay
from bench import sharegpt

pytestmark = pytest.mark.unit


# --- order-statistic interval ----------------------------------------------------------------

def test_the_binomial_cdf_ends_at_one_and_matches_a_small_case() -> None:
    cdf = cc.binomial_cdf(4, 0.5)
    assert cdf == pytest.approx([1 / 16, 5 / 16, 11 / 16, 15 / 16, 1.0])


def test_a_median_interval_holds_the_sample_median_and_comes_from_the_sample() -> None:
    values = [float(v) for v in range(1, 101)]
    low, high = cc.quantile_interval(values, 50)
    assert low in values and high in values
    assert low < statistics.median(values) < high
    # n=100, 90%: the classic ranks are about 42 and 59
    assert 40 <= low <= 44 and 57 <= high <= 61


def test_the_median_interval_covers_the_true_median_about_as_often_as_it_says() -> None:
    rng = random.Random(3)
    trials, covered = 400, 0
    for _ in range(trials):
        sample = [rng.expovariate(1.0) for _ in range(60)]
        low, high = cc.quantile_interval(sample, 50, level=0.90)
        covered += low <= math.log(2) <= high  # the exponential's median
    assert 0.86 <= covered / trials <= 0.98


def test_a_p99_of_few_values_has_no_upper_bound() -> None:
    low, high = cc.quantile_interval([float(v) for v in range(100)], 99)
    assert not math.isnan(low) and math.isnan(high)
    assert cc.interval_text((low, high)).endswith("to ?")


def test_intervals_refuse_nonsense_and_are_empty_without_values() -> None:
    with pytest.raises(ValueError):
        cc.quantile_interval([1.0], 100)
    assert all(math.isnan(v) for v in cc.quantile_interval([], 50))


# --- bootstrap -------------------------------------------------------------------------------

def test_the_bootstrap_interval_brackets_the_estimate_and_narrows_with_more_groups() -> None:
    rng = random.Random(5)
    few = [(rng.gauss(10, 2), rng.gauss(7, 2)) for _ in range(20)]
    many = few + [(rng.gauss(10, 2), rng.gauss(7, 2)) for _ in range(380)]

    def added(groups: list[tuple[float, float]]) -> float:
        return statistics.median(a for a, _ in groups) - statistics.median(b for _, b in groups)

    low, high = cc.bootstrap_interval(many, added)
    assert low < added(many) < high
    assert 2.0 < added(many) < 4.0
    assert high - low < (lambda b: b[1] - b[0])(cc.bootstrap_interval(few, added))
    assert cc.bootstrap_interval(many, added, seed=1) == cc.bootstrap_interval(many, added, seed=1)


# --- the ShareGPT reader ---------------------------------------------------------------------

def _conversation(first_from: str, text: str) -> dict[str, object]:
    return {"id": text[:8], "conversations": [{"from": first_from, "value": text}, {"from": "gpt", "value": "ok"}]}


def test_the_reader_keeps_every_whole_object_and_stops_at_the_cut() -> None:
    objects = [_conversation("human", f"question {i} " + "x" * 50) for i in range(20)]
    text = json.dumps(objects, indent=2)
    cut = text[: text.index("question 17")]  # inside the 18th object
    for chunk in (7, 64, 1 << 20):  # objects split across reads, or all in one
        got = list(sharegpt.read_objects(io.StringIO(cut), chunk_chars=chunk))
        assert got == objects[:17]


def test_the_reader_reads_a_whole_array_and_refuses_what_is_not_one() -> None:
    objects = [_conversation("human", "a"), _conversation("gpt", "b")]
    assert list(sharegpt.read_objects(io.StringIO(json.dumps(objects)), chunk_chars=5)) == objects
    with pytest.raises(ValueError, match="not a JSON array"):
        list(sharegpt.read_objects(io.StringIO('{"a": 1}')))
    with pytest.raises(ValueError, match="not an object"):
        list(sharegpt.read_objects(io.StringIO("[1, 2]")))


def test_the_reader_refuses_damage_in_the_middle_rather_than_calling_it_the_cut(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sharegpt, "MAX_OBJECT_CHARS", 100)
    damaged = '[{"a": 1}, {"b": oops}, ' + ", ".join(['{"c": 1}'] * 50) + "]"
    with pytest.raises(ValueError, match="does not parse"):
        list(sharegpt.read_objects(io.StringIO(damaged), chunk_chars=16))


def test_opening_prompts_are_the_first_human_turns_that_say_something() -> None:
    conversations = [_conversation("human", "hi"), _conversation("gpt", "hello"), _conversation("human", "  "),
                     {"id": "x", "conversations": []}, {"id": "y"}, _conversation("human", "why?")]
    assert list(sharegpt.opening_prompts(iter(conversations))) == ["hi", "why?"]


# --- the independent check -------------------------------------------------------------------

@pytest.mark.parametrize(("query", "cached", "reason"), [
    ("What is 12 times 7?", "What is 12 times 8?", "numbers differ"),
    ("Should I cancel my subscription?", "Should I not cancel my subscription?", "negation differs"),
    ("Why can't I log in?", "Why can I log in?", "negation differs"),
    ("Write a poem about Paris.", "Write a poem about Rome.", "names differ"),
    ("Write a hello world C++ program", "write me a hello world program in c#", "names differ"),
    ("Translate \"good night\" into French", "Translate \"good morning\" into French", "quoted text differs"),
])
def test_the_check_flags_what_changes_the_answer(query: str, cached: str, reason: str) -> None:
    assert reason in sharegpt.strict_check(query, cached).wrong
    assert reason in sharegpt.strict_check(cached, query).wrong  # symmetric


@pytest.mark.parametrize(("query", "cached"), [
    ("what's the boiling point of water at sea level?", "What is the boiling point of water at sea level?"),
    ("How do I make an HTTP request in Javascript?", "How do I make an HTTP request in JavaScript?"),
    ("hi", "Hi"),
    ("write a python script", "Write a Python script"),
    ("we work on an AI project, So I will explain it", "we work on an AI project so I will explain it"),
    ("Explain quantum computing in simple terms", "Explain quantum computing in simple terms."),
])
def test_the_check_passes_rewordings(query: str, cached: str) -> None:
    assert sharegpt.strict_check(query, cached).wrong == ()


def test_content_words_only_in_one_are_reported_apart_and_word_forms_are_not() -> None:
    check = sharegpt.strict_check("List the planets and their moons", "List the planets and their rings")
    assert check.wrong == () and check.differ == ("moons", "rings")
    assert sharegpt.strict_check("How do rainbows form?", "How does a rainbow form?").differ == ()


# --- the cache's lookup metrics ------------------------------------------------------------

def test_lookup_means_come_from_the_difference_of_two_scrapes() -> None:
    def scrape(total: float, count: int) -> str:
        return (f'# HELP skinflint_cache_lookup_seconds x\n'
                f'skinflint_cache_lookup_seconds_bucket{{kind="exact",le="0.001"}} {count}\n'
                f'skinflint_cache_lookup_seconds_sum{{kind="exact"}} {total}\n'
                f'skinflint_cache_lookup_seconds_count{{kind="exact"}} {count}.0\n')

    before, after = cc.lookup_totals(scrape(0.5, 100)), cc.lookup_totals(scrape(0.7, 200))
    assert before == {"exact": (0.5, 100.0)}
    mean, n = cc.lookup_means_ms(before, after)["exact"]
    assert n == 100 and mean == pytest.approx(2.0)


# --- where an index outgrows its budget --------------------------------------------------------

def test_entries_within_interpolates_between_the_sizes_that_bracket_the_budget() -> None:
    points = [(100, 5.0), (1000, 50.0), (10_000, 500.0)]
    n, how = cc.entries_within(points, 20.0)
    assert n == pytest.approx(400) and "between 100 and 1,000" in how


def test_entries_within_extrapolates_below_the_smallest_size_or_gives_up() -> None:
    n, how = cc.entries_within([(100, 30.0), (1000, 120.0)], 20.0)
    assert n == 0.0 and "extrapolated" in how  # 10 ms over at 100, 0.1 ms per entry: nothing fits
    n, _ = cc.entries_within([(1000, 30.0), (2000, 40.0)], 25.0)
    assert n == pytest.approx(500) and math.isfinite(n)
    assert cc.entries_within([(100, 5.0), (1000, 6.0)], 20.0)[0] == math.inf
    assert cc.entries_within([(100, 5.0)], -1.0)[0] == 0.0


# --- the replay's expectation of exact hits ----------------------------------------------------

def _pair(index: int, prompt: str, kind: str, status: int = 200, finish: str = "stop") -> replay.Pair:
    reply = cc.Reply(status, 1.0, kind, finish_reason=finish if status == 200 else None)
    return replay.Pair(index, prompt, reply, cc.Reply(200, 1.0), sent_at=float(index), sent_wall=float(index))


def test_an_exact_repeat_is_expected_only_after_its_twin_was_answered_and_stored() -> None:
    pairs = [
        _pair(0, "hi", "miss"),
        _pair(1, "hi", "exact"),  # expected: "hi" was stored
        _pair(2, "long one", "miss", status=400),  # refused: nothing stored
        _pair(3, "long one", "miss", status=400),  # so not expected
        _pair(4, "cut", "miss", finish="length"),  # truncated: not stored
        _pair(5, "cut", "miss", finish="length"),
        _pair(6, "hi  ", "exact"),  # the canonical form drops trailing spaces: expected
        _pair(7, "never asked", "exact"),  # served exact with no earlier twin: unexplained
    ]
    assert replay.exact_expectation(pairs, max_tokens=32) == (2, 1)


def test_examples_keep_one_of_each_pair_in_order() -> None:
    t = [replay.Traced("hi", "Hello", 0.8), replay.Traced("hi", "Hello", 0.8), replay.Traced("yo", "Hello", 0.7)]
    assert [x.query for x in replay._unique(t)] == ["hi", "yo"]
    checked = replay.check(replay.Traced("What is 2+2?", "What is 2+3?", 0.9))
    assert checked.wrong == ("numbers differ",)
    assert replay.check_counts([checked, replay.Traced("x", None, 0.6)]) == {
        "semantic_traced": 1, "semantic_flagged": 1, "flag_reasons": {"numbers differ": 1}, "semantic_differ": 0}
