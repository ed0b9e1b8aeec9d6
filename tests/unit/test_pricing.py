"""The price book and the pricing rule: exact nano-dollars, discounts, the counterfactual, the levers
split in order (they add up, on any event), shadow picks, config errors."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.subjects import Priority
from contracts.v1 import ShadowPick, UsageEvent
from services.accounting.pricing import Charge, PriceBook, ShadowCharge, UnknownTier, nanos_to_usd
from services.shared.settings import ConfigFileError, load_config_file
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

BOOK = PriceBook.model_validate({
    "currency": "USD",
    "tiers": {
        "small": {"input_per_mtok": "0.05", "cached_input_per_mtok": "0.01", "output_per_mtok": "0.10",
                  "batch_discount": "0.5"},
        "large": {"input_per_mtok": "2.50", "cached_input_per_mtok": "1.25", "output_per_mtok": "10.00",
                  "batch_discount": "0.5"},
        # Prices that are not a whole number of nano-dollars per token, to exercise rounding.
        "odd": {"input_per_mtok": "0.0005", "cached_input_per_mtok": "0", "output_per_mtok": "0.0015"},
    },
})


def usage(tier: str = "small", prompt: int = 0, cached: int = 0, completion: int = 0,
          priority: Priority = Priority.INTERACTIVE) -> UsageEvent:
    """An event from a producer that predates routing: no counterfactual tier, no decision."""
    return UsageEvent(request_id="r", tenant="t", model="m", tier=tier, priority=priority, status="ok",
                      prompt_tokens=prompt, cached_prompt_tokens=cached, completion_tokens=completion,
                      occurred_at=0.0)


def routed(tier: str = "small", counterfactual: str = "large", **fields: Any) -> UsageEvent:
    """An 'auto' request the learned policy sent to ``tier``; without routing it would have used
    ``counterfactual`` (the default tier)."""
    return usage(tier=tier, **fields).model_copy(update={
        "model": "auto", "counterfactual_tier": counterfactual, "route_policy": "learned", "route_score": 0.2,
        "route_threshold": 0.5})


def test_uncached_interactive_request() -> None:
    # 1000 * $0.05/M + 200 * $0.10/M = $0.00007 = 70,000 nano-dollars; unrouted, the counterfactual
    # is the same request on the same tier: nothing saved.
    charge = BOOK.price(usage(prompt=1000, completion=200))
    assert charge == Charge(cost_nanousd=70_000, counterfactual_nanousd=70_000, counterfactual_tier="small")


def test_cached_prompt_tokens_are_charged_at_the_cached_price() -> None:
    # 600 fresh * 0.05 + 400 cached * 0.01 = 34 $/M-units -> 34,000 nano-dollars
    assert BOOK.price(usage(prompt=1000, cached=400)).cost_nanousd == 34_000


def test_bulk_priority_gets_the_batch_discount() -> None:
    interactive = BOOK.price(usage(prompt=1000, cached=400, completion=100))
    bulk = BOOK.price(usage(prompt=1000, cached=400, completion=100, priority=Priority.BULK))
    assert interactive.cost_nanousd == 44_000
    assert bulk.cost_nanousd == 22_000


def test_the_counterfactual_is_the_counterfactual_tier_uncached_and_undiscounted() -> None:
    charge = BOOK.price(routed(prompt=1000, cached=900, completion=100, priority=Priority.BULK))
    # 1000 * 2.50 + 100 * 10.00 = 3500 $/M-units, though 900 tokens were cached and it was bulk.
    assert (charge.counterfactual_tier, charge.counterfactual_nanousd) == ("large", 3_500_000)


def test_a_request_on_its_counterfactual_tier_saves_only_through_prefix_cache_and_batching() -> None:
    charge = BOOK.price(usage(tier="large", prompt=1000, completion=100).model_copy(
        update={"counterfactual_tier": "large"}))
    assert charge.cost_nanousd == charge.counterfactual_nanousd == 3_500_000
    assert charge.saved_nanousd == 0


def test_cached_count_above_prompt_count_is_clamped() -> None:
    assert BOOK.price(usage(prompt=100, cached=500)).cost_nanousd == 1_000  # all 100 at the cached price


@pytest.mark.parametrize(("prompt", "completion", "nanos"), [
    (1, 0, 0),      # 0.5 nano-dollars: half to even rounds down to 0
    (3, 0, 2),      # 1.5 -> 2
    (5, 0, 2),      # 2.5 -> 2
    (1, 1, 2),      # 0.5 + 1.5 = 2.0: rounded once, on the total, not per part
    (7, 3, 8),      # 3.5 + 4.5 = 8.0
])
def test_rounding_is_half_to_even_on_the_total(prompt: int, completion: int, nanos: int) -> None:
    assert BOOK.price(usage(tier="odd", prompt=prompt, completion=completion)).cost_nanousd == nanos


def test_large_counts_stay_exact() -> None:
    # Floats would lose the last digits here; the charge is exact.
    charge = BOOK.price(usage(tier="odd", prompt=10**15 + 1, completion=10**15 + 1))
    assert charge.cost_nanousd == 2 * 10**15 + 2


def test_unknown_tier_raises_a_clear_error() -> None:
    with pytest.raises(UnknownTier, match=r"tier 'huge' has no price .*large, odd, small"):
        BOOK.price(usage(tier="huge", prompt=10))


def test_nanos_to_usd_is_exact() -> None:
    assert nanos_to_usd(70_000) == "0.000070000"
    assert nanos_to_usd(12_345_678_901) == "12.345678901"
    assert nanos_to_usd(0) == "0.000000000"


def test_shipped_price_book_loads() -> None:
    book = load_config_file(ROOT / "infra/config/pricebook.yaml", PriceBook)
    assert set(book.tiers) == {"small", "large"}
    assert book.tiers["small"].input_per_mtok == Decimal("0.05")


@pytest.mark.parametrize("book_file", ["pricebook.yaml", "pricebook.compose.yaml"])
def test_a_batch_item_costs_its_tiers_price_times_the_batch_discount(book_file: str) -> None:
    """What a bulk job's item is charged with each shipped price book: the tier's price, times its
    discount; the job it belongs to changes nothing."""
    book = load_config_file(ROOT / "infra/config" / book_file, PriceBook)
    for name, tier in book.tiers.items():
        one = usage(tier=name, prompt=1000, cached=400, completion=100)
        item = one.model_copy(update={"priority": Priority.BULK, "job_id": "batch_1"})
        full = (600 * tier.input_per_mtok + 400 * tier.cached_input_per_mtok + 100 * tier.output_per_mtok) * 1000
        charge = book.price(item)
        assert charge.cost_nanousd == round(full * tier.batch_discount), name
        assert charge.bulk_saved_nanousd == book.price(one).cost_nanousd - charge.cost_nanousd, name
        assert charge == book.price(item.model_copy(update={"job_id": None})), name


# --- config errors name the key -------------------------------------------------------------
def write_book(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pricebook.yaml"
    path.write_text(text)
    return path


GOOD_TIER = "{input_per_mtok: '1', cached_input_per_mtok: '0.5', output_per_mtok: '2'}"


@pytest.mark.parametrize(("text", "key"), [
    # Retired: each request's counterfactual is its own now; an old file is told to drop the key.
    (f"currency: USD\nreference_tier: small\ntiers: {{small: {GOOD_TIER}}}\n", "reference_tier"),
    ("currency: USD\ntiers: {small: {input_per_mtok: '1', cached_input_per_mtok: '1.5', output_per_mtok: '2'}}\n",
     "tiers.small.cached_input_per_mtok"),
    (f"currency: EUR\ntiers: {{small: {GOOD_TIER}}}\n", "currency"),
    ("currency: USD\n"
     "tiers: {small: {input_per_mtok: '1', cached_input_per_mtok: '0.5', output_per_mtk: '2'}}\n",
     "tiers.small.output_per_mtk"),
    ("currency: USD\n"
     "tiers: {small: {input_per_mtok: '-1', cached_input_per_mtok: '0', output_per_mtok: '2'}}\n",
     "tiers.small.input_per_mtok"),
    (f"currency: USD\ntiers: {{small: {GOOD_TIER[:-1]}, batch_discount: '1.5'}}}}\n",
     "tiers.small.batch_discount"),
    (f"currency: USD\ntiers: {{small: {GOOD_TIER}}}\nrefrence: x\n", "refrence"),
])
def test_config_errors_name_the_bad_key(tmp_path: Path, text: str, key: str) -> None:
    path = write_book(tmp_path, text)
    with pytest.raises(ConfigFileError) as err:
        load_config_file(path, PriceBook)
    message = str(err.value)
    assert str(path) in message
    assert f"{key}:" in message


def test_batch_discount_defaults_to_no_discount() -> None:
    raw: dict[str, Any] = {"currency": "USD",
                           "tiers": {"a": {"input_per_mtok": "1", "cached_input_per_mtok": "1",
                                           "output_per_mtok": "1"}}}
    book = PriceBook.model_validate(raw)
    assert book.price(usage(tier="a", prompt=10, priority=Priority.BULK)).cost_nanousd == 10_000


def cache_hit(kind: str = "exact", source_tier: str | None = "large", prompt: int = 1000,
              completion: int = 200) -> UsageEvent:
    return usage().model_copy(update={
        "cache_outcome": kind, "cache_source_tier": source_tier, "cache_source_prompt_tokens": prompt,
        "cache_source_completion_tokens": completion})


@pytest.mark.parametrize("kind", ["exact", "semantic"])
def test_a_cache_hit_costs_nothing_and_saves_the_whole_counterfactual(kind: str) -> None:
    # No counterfactual tier (an older producer): the answer's own tier stands in for it.
    charge = BOOK.price(cache_hit(kind))
    # Saved: 1000 * $2.50/M + 200 * $10/M at the large tier that produced the answer = $0.0045.
    assert charge == Charge(cost_nanousd=0, counterfactual_nanousd=4_500_000, counterfactual_tier="large",
                            cache_saved_nanousd=4_500_000)
    small = BOOK.price(cache_hit(kind, source_tier="small"))
    assert (small.cost_nanousd, small.cache_saved_nanousd) == (0, 70_000)


def test_a_hit_is_counted_against_the_requests_counterfactual_not_the_answers_tier() -> None:
    # An 'auto' request whose counterfactual is large, served an answer the small tier made: uncached
    # it would have gone to large, so the cache, first in order, is credited with large's price.
    hit = cache_hit(source_tier="small").model_copy(update={"counterfactual_tier": "large",
                                                            "route_policy": "learned"})
    charge = BOOK.price(hit)
    assert (charge.cost_nanousd, charge.cache_saved_nanousd, charge.routing_saved_nanousd) == (0, 4_500_000, 0)


def test_a_hit_whose_source_tier_has_no_price_is_counted_on_the_requests_tier() -> None:
    charge = BOOK.price(cache_hit(source_tier="retired"))
    assert (charge.counterfactual_tier, charge.cost_nanousd, charge.cache_saved_nanousd) == ("small", 0, 70_000)


def test_a_miss_saves_nothing() -> None:
    event = usage(prompt=1000, completion=200).model_copy(update={"cache_outcome": "miss"})
    assert BOOK.price(event) == Charge(cost_nanousd=70_000, counterfactual_nanousd=70_000,
                                       counterfactual_tier="small")


# --- the levers, in order ---------------------------------------------------------------------
def test_routing_to_a_cheaper_tier_saves_the_price_difference() -> None:
    charge = BOOK.price(routed(prompt=1000, completion=200))
    # 4,500,000 on large (the default 'auto' would have used) less 70,000 on small.
    assert (charge.counterfactual_nanousd, charge.cost_nanousd) == (4_500_000, 70_000)
    assert charge.routing_saved_nanousd == 4_430_000
    assert charge.saved_nanousd == charge.routing_saved_nanousd


def test_routing_to_a_dearer_tier_is_a_negative_saving() -> None:
    charge = BOOK.price(routed(tier="large", counterfactual="small", prompt=1000, completion=200))
    assert (charge.counterfactual_nanousd, charge.cost_nanousd) == (70_000, 4_500_000)
    assert charge.routing_saved_nanousd == -4_430_000


def test_a_fallback_is_not_credited_to_routing() -> None:
    # The client named the large model; large was down and its fallback, small, answered.
    event = usage(prompt=1000, completion=200).model_copy(update={"counterfactual_tier": "large",
                                                                  "fallback_from": "large"})
    charge = BOOK.price(event)
    assert (charge.routing_saved_nanousd, charge.fallback_saved_nanousd) == (0, 4_430_000)
    # A routed request whose pick (small) was down, answered by large: routing saved nothing either.
    dearer = BOOK.price(routed(tier="large", prompt=1000, completion=200).model_copy(
        update={"fallback_from": "small"}))
    assert (dearer.routing_saved_nanousd, dearer.fallback_saved_nanousd, dearer.saved_nanousd) == (0, 0, 0)


def test_each_lever_is_credited_after_the_ones_before_it() -> None:
    charge = BOOK.price(routed(prompt=1000, cached=400, completion=100, priority=Priority.BULK))
    # counterfactual: 1000 * 2.50 + 100 * 10 = 3,500,000 on large, full price
    # routing: the same tokens on small at full price, 1000 * 0.05 + 100 * 0.10 = 60,000
    # prefix: 400 of them cached, 600 * 0.05 + 400 * 0.01 + 100 * 0.10 = 44,000
    # bulk: half of that, 22,000: the cost
    assert charge == Charge(
        cost_nanousd=22_000, counterfactual_nanousd=3_500_000, counterfactual_tier="large",
        routing_saved_nanousd=3_440_000, prefix_saved_nanousd=16_000, bulk_saved_nanousd=22_000)


def test_a_cascades_failed_attempt_is_charged_on_top_as_its_cost() -> None:
    # Routed to small with the cascade on; small's answer (1000 in, 48 out) failed the check and
    # large answered instead. Large is also the counterfactual: routing saved nothing, the cascade
    # cost the weak attempt, 1000 * 0.05 + 48 * 0.10 = 54,800.
    event = routed(tier="large", prompt=1000, completion=100).model_copy(update={
        "escalated_from": "small", "escalation_prompt_tokens": 1000, "escalation_completion_tokens": 48})
    charge = BOOK.price(event)
    assert (charge.counterfactual_nanousd, charge.cost_nanousd) == (3_500_000, 3_554_800)
    assert (charge.routing_saved_nanousd, charge.cascade_saved_nanousd, charge.saved_nanousd) == (0, -54_800, -54_800)


def test_a_counterfactual_tier_without_a_price_claims_no_routing_saving() -> None:
    charge = BOOK.price(routed(counterfactual="retired", prompt=1000, completion=200))
    assert (charge.counterfactual_tier, charge.counterfactual_nanousd, charge.routing_saved_nanousd) == (
        "small", 70_000, 0)


def test_shadow_picks_are_priced_like_the_actual_cost() -> None:
    event = routed(prompt=1000, cached=400, completion=100).model_copy(update={"route_shadow": [
        ShadowPick(policy="strict", tier="large"), ShadowPick(policy="same", tier="small"),
        ShadowPick(policy="strict", tier="small"),  # a repeated name: the first pick counts
        ShadowPick(policy="gold", tier="gold")]})
    shadow = BOOK.price(event).shadow
    # large as charged: 600 * 2.50 + 400 * 1.25 + 100 * 10 = 3,000,000; the live pick, small: 44,000.
    assert shadow == (ShadowCharge("strict", 3_000_000, 44_000), ShadowCharge("same", 44_000, 44_000),
                      ShadowCharge("gold", None, None))


def test_the_live_pick_of_a_fallback_is_the_tier_that_was_down() -> None:
    event = routed(tier="small", prompt=1000, completion=0).model_copy(update={
        "fallback_from": "large", "route_shadow": [ShadowPick(policy="p", tier="large")]})
    assert BOOK.price(event).shadow == (ShadowCharge("p", 2_500_000, 2_500_000),)


def _exact_cost(event: UsageEvent) -> int:
    """The cost by the plain formula, in fractions: what the split must leave as the cost."""
    tier = BOOK.tiers[event.tier]
    cached = min(event.cached_prompt_tokens, event.prompt_tokens)
    total = (Fraction(event.prompt_tokens - cached) * Fraction(tier.input_per_mtok)
             + cached * Fraction(tier.cached_input_per_mtok) + event.completion_tokens * Fraction(tier.output_per_mtok))
    if event.priority is Priority.BULK:
        total *= Fraction(tier.batch_discount)
    cost = round(total * 1000)  # round(): half to even, as the price book rounds
    weak = BOOK.tiers.get(event.escalated_from or "")
    if weak is not None:  # a cascade's failed attempt, charged on top
        attempt = (event.escalation_prompt_tokens * Fraction(weak.input_per_mtok)
                   + event.escalation_completion_tokens * Fraction(weak.output_per_mtok))
        if event.priority is Priority.BULK:
            attempt *= Fraction(weak.batch_discount)
        cost += round(attempt * 1000)
    return cost


TIERS = st.sampled_from(["small", "large", "odd"])
COUNTS = st.integers(min_value=0, max_value=10**9)


@st.composite
def events(draw: st.DrawFn) -> UsageEvent:
    prompt = draw(COUNTS)
    return UsageEvent(
        request_id="r", tenant="t", model="auto", tier=draw(TIERS), priority=draw(st.sampled_from(Priority)),
        status=draw(st.sampled_from(["ok", "error", "aborted"])), prompt_tokens=prompt,
        cached_prompt_tokens=draw(st.integers(min_value=0, max_value=prompt + 10)), completion_tokens=draw(COUNTS),
        cache_outcome=draw(st.sampled_from(["none", "miss", "exact", "semantic"])),
        cache_source_tier=draw(st.none() | TIERS | st.just("retired")),
        cache_source_prompt_tokens=draw(COUNTS), cache_source_completion_tokens=draw(COUNTS),
        counterfactual_tier=draw(st.none() | TIERS | st.just("retired")),
        route_policy=draw(st.none() | st.just("learned")), fallback_from=draw(st.none() | TIERS),
        escalated_from=draw(st.none() | TIERS | st.just("retired")), escalation_prompt_tokens=draw(COUNTS),
        escalation_completion_tokens=draw(COUNTS),
        route_shadow=[ShadowPick(policy=f"p{i}", tier=t) for i, t in enumerate(draw(st.lists(TIERS, max_size=3)))],
        occurred_at=0.0)


@settings(max_examples=500, deadline=None)
@given(events())
def test_the_levers_add_up_to_the_counterfactual_less_the_cost(event: UsageEvent) -> None:
    charge = BOOK.price(event)
    assert charge.counterfactual_nanousd - charge.cost_nanousd == charge.saved_nanousd
    assert charge.cost_nanousd == _exact_cost(event)
    assert min(charge.cache_saved_nanousd, charge.prefix_saved_nanousd, charge.bulk_saved_nanousd) >= 0
    assert charge.cascade_saved_nanousd <= 0
    if event.fallback_from is not None:
        assert charge.routing_saved_nanousd == 0
    else:
        assert charge.fallback_saved_nanousd == 0
    if event.cache_outcome not in ("exact", "semantic"):
        assert charge.cache_saved_nanousd == 0
    if charge.counterfactual_tier == event.tier:
        assert charge.routing_saved_nanousd == charge.fallback_saved_nanousd == 0
    for shadow in charge.shadow:
        if shadow.policy in {p.policy for p in event.route_shadow if p.tier == (event.fallback_from or event.tier)}:
            assert shadow.cost_nanousd == shadow.live_cost_nanousd


def test_a_retired_reference_tier_says_what_to_do(tmp_path: Path) -> None:
    path = write_book(tmp_path, f"currency: USD\nreference_tier: small\ntiers: {{small: {GOOD_TIER}}}\n")
    with pytest.raises(ConfigFileError, match=r"reference_tier: .*no longer used.*remove this key"):
        load_config_file(path, PriceBook)
