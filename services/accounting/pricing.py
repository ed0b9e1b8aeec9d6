"""What a request costs: the price book and the pricing rule, as plain logic.

Money is counted in integer nano-dollars (1e-9 USD): exact to add up in SQL, and fine enough
that the cheapest tier's per-token price is still a whole number of units. Prices are read as
``Decimal`` and every charge is rounded once, half to even, so totals carry no float error.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from contracts.subjects import Priority
from contracts.v1 import UsageEvent

#: Nano-dollars per dollar-per-million-tokens, per token: 1e9 / 1e6.
_NANOS_PER_MTOK_PRICE = Decimal(1000)
#: Enough digits that no product of a token count and a price is rounded before the final step.
_PRECISION = 60


@dataclass(frozen=True)
class Charge:
    """What one request cost, and what it would have cost on the reference tier, uncached."""

    cost_nanousd: int
    reference_nanousd: int
    #: False when the tier had no price: both amounts are then 0 and the row is flagged.
    priced: bool = True
    #: A cache hit: what the answer it served had cost, its tokens priced at the tier that made it.
    cache_saved_nanousd: int = 0


#: The charge of a request whose tier is missing from the price book.
UNPRICED = Charge(cost_nanousd=0, reference_nanousd=0, priced=False)


class UnknownTier(LookupError):
    """The event names a tier the price book has no price for."""

    def __init__(self, tier: str, known: list[str]) -> None:
        super().__init__(f"tier {tier!r} has no price in the price book (priced tiers: "
                         f"{', '.join(known)}); add it to the price book")
        self.tier = tier


class TierPrice(BaseModel):
    """Prices of one tier, in dollars per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: Decimal = Field(ge=0, description="Prompt tokens not served from prefix cache.")
    cached_input_per_mtok: Decimal = Field(ge=0, description="Prompt tokens served from prefix cache.")
    output_per_mtok: Decimal = Field(ge=0, description="Generated tokens.")
    batch_discount: Decimal = Field(
        default=Decimal(1), ge=0, le=1,
        description="Fraction of the price charged for bulk priority (0.5: half price; 1: no discount).",
    )


class PriceBook(BaseModel):
    """The price book file (``infra/config/pricebook.yaml``), validated at start-up."""

    model_config = ConfigDict(extra="forbid")

    currency: Literal["USD"] = Field(description="Prices and reports are in US dollars.")
    # Declared before reference_tier so that its validator can see the tiers.
    tiers: dict[str, TierPrice] = Field(min_length=1, description="Prices per tier name.")
    reference_tier: str = Field(
        description="The tier every request is also priced on, uncached and without batch discount: "
                    "the counterfactual the savings are measured against."
    )

    @field_validator("reference_tier")
    @classmethod
    def _reference_is_a_tier(cls, value: str, info: ValidationInfo) -> str:
        tiers = info.data.get("tiers")
        if tiers is not None and value not in tiers:
            raise ValueError(f"{value!r} is not one of the tiers ({', '.join(sorted(tiers))})")
        return value

    def price(self, event: UsageEvent) -> Charge:
        """The actual and the reference cost of ``event``.

        Raises ``UnknownTier`` when the event's tier has no price; the caller decides what an
        unpriced request means (accounting records it at cost 0, flagged, rather than lose it).
        """
        tier = self.tiers.get(event.tier)
        if tier is None:
            raise UnknownTier(event.tier, sorted(self.tiers))
        reference = self.tiers[self.reference_tier]
        if event.cache_outcome in ("exact", "semantic"):
            return self._cache_hit(event, reference)
        # Cached tokens are a subset of the prompt; clamp a producer's over-count so a cost never
        # goes negative.
        cached = min(event.cached_prompt_tokens, event.prompt_tokens)
        with localcontext(prec=_PRECISION):
            actual = ((event.prompt_tokens - cached) * tier.input_per_mtok
                      + cached * tier.cached_input_per_mtok
                      + event.completion_tokens * tier.output_per_mtok)
            if event.priority is Priority.BULK:
                actual *= tier.batch_discount
            counterfactual = (event.prompt_tokens * reference.input_per_mtok
                              + event.completion_tokens * reference.output_per_mtok)
            return Charge(cost_nanousd=_to_nanos(actual), reference_nanousd=_to_nanos(counterfactual))


    def _cache_hit(self, event: UsageEvent, reference: TierPrice) -> Charge:
        """A cached answer: the tokens this request used (none, unless a producer says otherwise)
        at its tier; what it saved is the served answer's own tokens at the tier that made them
        (0 when that tier has no price: nothing is claimed that cannot be priced); the
        counterfactual is those tokens on the reference tier, as for any request sent uncached."""
        tier = self.tiers[event.tier]
        prompt, completion = event.cache_source_prompt_tokens, event.cache_source_completion_tokens
        source = self.tiers.get(event.cache_source_tier or "")
        with localcontext(prec=_PRECISION):
            actual = event.prompt_tokens * tier.input_per_mtok + event.completion_tokens * tier.output_per_mtok
            saved = (prompt * source.input_per_mtok + completion * source.output_per_mtok) if source else Decimal(0)
            counterfactual = (max(prompt, event.prompt_tokens) * reference.input_per_mtok
                              + max(completion, event.completion_tokens) * reference.output_per_mtok)
            return Charge(cost_nanousd=_to_nanos(actual), reference_nanousd=_to_nanos(counterfactual),
                          cache_saved_nanousd=_to_nanos(saved))


def _to_nanos(per_mtok_total: Decimal) -> int:
    """Dollars-per-million-tokens times tokens, as whole nano-dollars (rounded half to even)."""
    return int((per_mtok_total * _NANOS_PER_MTOK_PRICE).to_integral_value(rounding=ROUND_HALF_EVEN))


def nanos_to_usd(nanos: int) -> str:
    """Nano-dollars as an exact decimal string of dollars, e.g. 1500 -> '0.000001500'."""
    return f"{Decimal(nanos).scaleb(-9):.9f}"
