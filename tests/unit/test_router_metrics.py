"""RouteLLM's metrics on toy cases computed by hand: the curve, PGR, APGR, CPT, cost at a quality
target, and the threshold that reaches it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.classifier import metrics

pytestmark = pytest.mark.unit


def toy() -> tuple[np.ndarray, np.ndarray]:
    """Four rows: the first gains 1 from the strong tier, the others nothing."""
    return np.array([0.0, 1.0, 1.0, 1.0]), np.array([1.0, 1.0, 1.0, 1.0])


def test_the_curve_steps_at_each_score_and_ties_move_together() -> None:
    weak, strong = toy()
    c = metrics.curve([0.9, 0.5, 0.5, 0.1], weak, strong)
    assert c.cost.tolist() == [0.0, 0.25, 0.75, 1.0]
    assert c.quality.tolist() == [0.75, 1.0, 1.0, 1.0]
    assert c.thresholds[0] == math.inf and c.thresholds[1:].tolist() == [0.9, 0.5, 0.1]
    assert (c.q_weak, c.q_strong) == (0.75, 1.0)


def test_a_perfect_router_recovers_the_gap_as_soon_as_the_gaining_rows_go_strong() -> None:
    weak, strong = toy()
    c = metrics.curve(metrics.oracle_scores(weak, strong), weak, strong)
    # PGR rises linearly from 0 to 1 over the first quarter of calls, then stays at 1.
    assert metrics.pgr_at(c, 0.125) == pytest.approx(0.5)
    assert metrics.apgr(c) == pytest.approx(1 - 0.25 / 2, abs=1e-3)
    assert metrics.cpt(c, 0.5) == pytest.approx(0.125)
    assert metrics.cpt(c, 0.8) == pytest.approx(0.2)


def test_apgr_of_a_perfect_router_nears_1_when_few_rows_need_the_strong_tier() -> None:
    weak = np.ones(1000)
    weak[:5] = 0.0
    strong = np.ones(1000)
    assert metrics.apgr(metrics.curve(metrics.oracle_scores(weak, strong), weak, strong)) > 0.99


def test_a_random_router_scores_about_one_half_and_equal_scores_exactly_one_half() -> None:
    rng = np.random.default_rng(7)
    weak = rng.random(20_000) * 0.5
    strong = weak + rng.random(20_000) * 0.5
    assert metrics.apgr(metrics.curve(rng.random(20_000), weak, strong)) == pytest.approx(0.5, abs=0.02)
    # All tied: one straight step from all-weak to all-strong.
    assert metrics.apgr(metrics.curve(np.zeros(20_000), weak, strong)) == pytest.approx(0.5, abs=1e-6)


def test_a_router_that_prefers_the_wrong_rows_scores_below_one_half() -> None:
    weak, strong = toy()
    assert metrics.apgr(metrics.curve([0.1, 0.9, 0.8, 0.7], weak, strong)) == pytest.approx(0.125, abs=1e-3)


def test_cost_at_quality_and_its_price_against_all_strong() -> None:
    weak, strong = toy()
    c = metrics.curve(metrics.oracle_scores(weak, strong), weak, strong)
    at = metrics.cost_at_quality(c, target=0.95, price_ratio=10)
    # 0.95 of q_strong (1.0) is reached at PGR (0.95 - 0.75) / 0.25 = 0.8, i.e. 20% strong calls.
    assert at.share == pytest.approx(0.2)
    assert at.cost_vs_strong == pytest.approx((0.2 * 10 + 0.8) / 10)
    assert metrics.cost_at_quality(c, target=0.7).share == 0.0  # the weak tier alone is enough


def test_a_quality_out_of_reach_has_no_cost() -> None:
    weak, strong = toy()
    assert math.isnan(metrics.cost_at_quality(metrics.curve([1, 2, 3, 4], weak, strong), target=1.01).share)
    assert math.isnan(metrics.cpt(metrics.curve([1, 2, 3, 4], weak, weak), 2.0))


def test_the_threshold_for_a_quality_target_is_the_highest_that_reaches_it() -> None:
    weak = np.array([0.0, 0.0, 1.0, 1.0])
    strong = np.ones(4)
    scores = np.array([0.9, 0.6, 0.4, 0.2])
    t = metrics.threshold_for_quality(metrics.curve(scores, weak, strong), target=0.95)
    assert t.threshold == 0.6 and t.share == 0.5 and t.quality == 1.0 and t.pgr == 1.0
    assert metrics.at_threshold(scores, weak, strong, t.threshold) == (0.5, 1.0)
    # A target reached by nothing short of everything: the lowest score sends everything strong.
    t = metrics.threshold_for_quality(metrics.curve([0.2, 0.4, 0.6, 0.9], weak, strong), target=1.0)
    assert t.threshold == 0.2 and t.share == 1.0


def test_the_curve_refuses_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="3 scores for 2 weak"):
        metrics.curve([1, 2, 3], [0, 0], [1, 1])


# -- weights: a row of weight w counts as w rows ------------------------------------------------

def weighted_case(seed: int = 3, n: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scores with ties, labels, and integer weights 1..4."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 15, n) / 15  # ties on purpose
    weak = rng.choice([0.0, 0.2, 0.6, 0.9, 1.0], n)
    strong = np.minimum(1.0, weak + rng.choice([0.0, 0.1, 0.5, 0.8], n))
    return scores, weak, strong, rng.integers(1, 5, n).astype(float)


def figures(c: metrics.Curve) -> tuple[float, ...]:
    t = metrics.threshold_for_quality(c, 0.95)
    at = metrics.cost_at_quality(c, 0.95, 50)
    return (metrics.apgr(c), metrics.cpt(c, 0.5), metrics.cpt(c, 0.8), at.share, at.cost_vs_strong, t.threshold,
            t.share, t.quality, c.q_weak, c.q_strong)


def test_integer_weights_give_the_figures_of_the_rows_duplicated() -> None:
    scores, weak, strong, w = weighted_case()
    reps = w.astype(int)
    weighted = metrics.curve(scores, weak, strong, w)
    duplicated = metrics.curve(np.repeat(scores, reps), np.repeat(weak, reps), np.repeat(strong, reps))
    np.testing.assert_allclose(weighted.cost, duplicated.cost, atol=1e-12)
    np.testing.assert_allclose(weighted.quality, duplicated.quality, atol=1e-12)
    np.testing.assert_array_equal(weighted.thresholds, duplicated.thresholds)
    assert figures(weighted) == pytest.approx(figures(duplicated), abs=1e-9)
    # ...and they differ from the unweighted rows' (the test could fail).
    assert metrics.apgr(weighted) != pytest.approx(metrics.apgr(metrics.curve(scores, weak, strong)), abs=1e-3)
    for t in (0.0, 0.3, 0.6, 2.0):
        assert metrics.at_threshold(scores, weak, strong, t, w) == pytest.approx(
            metrics.at_threshold(np.repeat(scores, reps), np.repeat(weak, reps), np.repeat(strong, reps), t))


def test_a_weight_of_zero_is_the_row_left_out() -> None:
    scores, weak, strong, w = weighted_case(seed=5)
    w[::3] = 0.0
    kept = w > 0
    assert figures(metrics.curve(scores, weak, strong, w)) == pytest.approx(
        figures(metrics.curve(scores[kept], weak[kept], strong[kept], w[kept])), abs=1e-9)


def test_weights_all_1_or_scaled_give_the_unweighted_figures() -> None:
    scores, weak, strong, _ = weighted_case(seed=9)
    plain = metrics.curve(scores, weak, strong)
    for w in (np.ones(len(scores)), np.full(len(scores), 2.5)):
        c = metrics.curve(scores, weak, strong, w)
        np.testing.assert_allclose(c.cost, plain.cost, atol=1e-12)
        np.testing.assert_allclose(c.quality, plain.quality, atol=1e-12)
        assert figures(c) == pytest.approx(figures(plain), abs=1e-12)
    # The hand-computed toy case is unchanged by unit weights.
    weak, strong = toy()
    c = metrics.curve([0.9, 0.5, 0.5, 0.1], weak, strong, [1, 1, 1, 1])
    assert c.cost.tolist() == [0.0, 0.25, 0.75, 1.0] and c.quality.tolist() == [0.75, 1.0, 1.0, 1.0]


def test_a_heavier_row_moves_the_curve_by_its_weight() -> None:
    weak, strong = toy()
    # The gaining row counts 3 times: it is half the calls, and the weak tier alone reaches 0.5.
    c = metrics.curve([0.9, 0.5, 0.5, 0.1], weak, strong, [3, 1, 1, 1])
    assert c.cost.tolist() == [0.0, 0.5, 5 / 6, 1.0]
    assert (c.q_weak, c.q_strong) == (0.5, 1.0)
    assert metrics.at_threshold(np.array([0.9, 0.5, 0.5, 0.1]), weak, strong, 0.9, [3, 1, 1, 1]) == (0.5, 1.0)


@pytest.mark.parametrize(("weights", "message"), [
    ([1, 1, 1], "3 weights for 4 rows"), ([1, -1, 1, 1], ">= 0"), ([0, 0, 0, 0], "not all 0"),
    ([1, math.nan, 1, 1], "finite"),
])
def test_bad_weights_are_refused(weights: list[float], message: str) -> None:
    weak, strong = toy()
    with pytest.raises(ValueError, match=message):
        metrics.curve([1, 2, 3, 4], weak, strong, weights)
