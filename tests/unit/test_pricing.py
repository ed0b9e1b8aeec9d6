"""The price book and the pricing rule: exact nano-dollars, discounts, counterfactual, errors."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from contracts.subjects import Priority
from contracts.v1 import UsageEvent
from services.accounting.pricing import Charge, PriceBook, UnknownTier, nanos_to_usd
from services.shared.settings import ConfigFileError, load_config_file
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

BOOK = PriceBook.model_validate({
    "currency": "USD",
    "reference_tier": "large",
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
    return UsageEvent(request_id="r", tenant="t", model="m", tier=tier, priority=priority, status="ok",
                      prompt_tokens=prompt, cached_prompt_tokens=cached, completion_tokens=completion,
                      occurred_at=0.0)


def test_uncached_interactive_request() -> None:
    # 1000 * $0.05/M + 200 * $0.10/M = $0.00007 = 70,000 nano-dollars
    charge = BOOK.price(usage(prompt=1000, completion=200))
    assert charge == Charge(cost_nanousd=70_000, reference_nanousd=4_500_000)


def test_cached_prompt_tokens_are_charged_at_the_cached_price() -> None:
    # 600 fresh * 0.05 + 400 cached * 0.01 = 34 $/M-units -> 34,000 nano-dollars
    assert BOOK.price(usage(prompt=1000, cached=400)).cost_nanousd == 34_000


def test_bulk_priority_gets_the_batch_discount() -> None:
    interactive = BOOK.price(usage(prompt=1000, cached=400, completion=100))
    bulk = BOOK.price(usage(prompt=1000, cached=400, completion=100, priority=Priority.BULK))
    assert interactive.cost_nanousd == 44_000
    assert bulk.cost_nanousd == 22_000


def test_reference_is_the_reference_tier_uncached_and_undiscounted() -> None:
    charge = BOOK.price(usage(prompt=1000, cached=900, completion=100, priority=Priority.BULK))
    # 1000 * 2.50 + 100 * 10.00 = 3500 $/M-units, though 900 tokens were cached and it was bulk.
    assert charge.reference_nanousd == 3_500_000


def test_a_request_on_the_reference_tier_saves_only_through_cache_and_batching() -> None:
    charge = BOOK.price(usage(tier="large", prompt=1000, completion=100))
    assert charge.cost_nanousd == charge.reference_nanousd == 3_500_000


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
    assert book.reference_tier in book.tiers
    assert book.tiers["small"].input_per_mtok == Decimal("0.05")


# --- config errors name the key -------------------------------------------------------------
def write_book(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pricebook.yaml"
    path.write_text(text)
    return path


GOOD_TIER = "{input_per_mtok: '1', cached_input_per_mtok: '0.5', output_per_mtok: '2'}"


@pytest.mark.parametrize(("text", "key"), [
    (f"currency: USD\nreference_tier: big\ntiers: {{small: {GOOD_TIER}}}\n", "reference_tier"),
    (f"currency: EUR\nreference_tier: small\ntiers: {{small: {GOOD_TIER}}}\n", "currency"),
    ("currency: USD\nreference_tier: small\n"
     "tiers: {small: {input_per_mtok: '1', cached_input_per_mtok: '0.5', output_per_mtk: '2'}}\n",
     "tiers.small.output_per_mtk"),
    ("currency: USD\nreference_tier: small\n"
     "tiers: {small: {input_per_mtok: '-1', cached_input_per_mtok: '0', output_per_mtok: '2'}}\n",
     "tiers.small.input_per_mtok"),
    (f"currency: USD\nreference_tier: small\ntiers: {{small: {GOOD_TIER[:-1]}, batch_discount: '1.5'}}}}\n",
     "tiers.small.batch_discount"),
    (f"currency: USD\nreference_tier: small\ntiers: {{small: {GOOD_TIER}}}\nrefrence: x\n", "refrence"),
])
def test_config_errors_name_the_bad_key(tmp_path: Path, text: str, key: str) -> None:
    path = write_book(tmp_path, text)
    with pytest.raises(ConfigFileError) as err:
        load_config_file(path, PriceBook)
    message = str(err.value)
    assert str(path) in message
    assert f"{key}:" in message


def test_batch_discount_defaults_to_no_discount() -> None:
    raw: dict[str, Any] = {"currency": "USD", "reference_tier": "a",
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
def test_a_cache_hit_costs_nothing_and_saves_the_answers_tokens_at_the_tier_that_made_them(kind: str) -> None:
    charge = BOOK.price(cache_hit(kind))
    # Saved: 1000 * $2.50/M + 200 * $10/M at the large tier that produced the answer = $0.0045.
    assert charge == Charge(cost_nanousd=0, reference_nanousd=4_500_000, cache_saved_nanousd=4_500_000)
    small = BOOK.price(cache_hit(kind, source_tier="small"))
    assert (small.cost_nanousd, small.cache_saved_nanousd) == (0, 70_000)


def test_a_hit_whose_source_tier_has_no_price_claims_no_saving() -> None:
    charge = BOOK.price(cache_hit(source_tier="retired"))
    assert (charge.cost_nanousd, charge.cache_saved_nanousd, charge.priced) == (0, 0, True)


def test_a_miss_saves_nothing() -> None:
    event = usage(prompt=1000, completion=200).model_copy(update={"cache_outcome": "miss"})
    assert BOOK.price(event) == Charge(cost_nanousd=70_000, reference_nanousd=4_500_000)
