"""What a request costs, what it would have cost, and which lever saved the difference: plain logic.

Money is counted in integer nano-dollars (1e-9 USD): exact to add up in SQL, and fine enough
that the cheapest tier's per-token price is still a whole number of units. Prices are read as
``Decimal``; each amount is rounded once, half to even, so totals carry no float error.

The split (``ARCHITECTURE.md``, "Accounting"): a request's **counterfactual** is the request as
sent, priced on the tier it would have used without routing (the model it named, or the
configured default tier for ``auto``), uncached, full prompt, no batch discount. The levers then
apply one after another, each credited only with what it changed after the ones before it:

====  ==================================================  ===============================
step  the request priced as                                 the difference is credited to
====  ==================================================  ===============================
c0    the counterfactual                                   -
c1    its own tokens, counterfactual tier, full price      cache (c0 - c1)
c2    its own tokens, the tier that answered, full price   routing, or fallback (c1 - c2)
c3    the same, cached prompt tokens at the cached price   prefix cache (c2 - c3)
c4    the same, with the batch discount if bulk            bulk (c3 - c4)
c5    c4 plus a cascade's failed attempt (its tokens on    cascade (c4 - c5, never > 0);
      the weak tier, no cached prompt, bulk discounted)    c5 is the cost
====  ==================================================  ===============================

Each step is rounded to whole nano-dollars and each lever is a difference of two rounded steps,
so the parts add up to ``counterfactual - cost`` exactly, whatever the prices. (Retrieval
trimming, the ARCHITECTURE's third lever, does not exist yet; it would sit between c2 and c3.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from contracts.subjects import Priority
from contracts.v1 import UsageEvent

#: Nano-dollars per dollar-per-million-tokens, per token: 1e9 / 1e6.
_NANOS_PER_MTOK_PRICE = Decimal(1000)
#: Enough digits that no product of a token count and a price is rounded before the final step.
_PRECISION = 60
#: Cache outcomes that served an answer (``contracts.v1.CacheOutcome``).
CACHE_HITS = ("exact", "semantic")


@dataclass(frozen=True)
class ShadowCharge:
    """What a candidate policy's pick would have cost: the request's own tokens priced on the tier
    it picked exactly as the actual cost is priced (cached tokens, batch discount), beside the
    live pick priced the same way, so that two picks of the same tier cost the same. ``None``:
    one of the two tiers has no price."""

    policy: str
    cost_nanousd: int | None
    live_cost_nanousd: int | None


@dataclass(frozen=True)
class Charge:
    """What one request cost, what it would have cost (the counterfactual), and the levers' shares.

    Invariant: ``counterfactual_nanousd - cost_nanousd == sum of the six *_saved_nanousd``.
    ``cache``, ``prefix`` and ``bulk`` are never negative; ``routing`` and ``fallback`` are
    negative when the request was answered by a dearer tier than its counterfactual; ``cascade``
    is never positive (what a weak attempt that failed the cheap check cost on top).
    """

    cost_nanousd: int
    counterfactual_nanousd: int
    #: False when the tier had no price: every amount is then 0 and the row is flagged.
    priced: bool = True
    #: The tier the counterfactual was priced on (None: unpriced).
    counterfactual_tier: str | None = None
    cache_saved_nanousd: int = 0
    routing_saved_nanousd: int = 0
    fallback_saved_nanousd: int = 0
    prefix_saved_nanousd: int = 0
    bulk_saved_nanousd: int = 0
    cascade_saved_nanousd: int = 0
    shadow: tuple[ShadowCharge, ...] = field(default=())

    @property
    def saved_nanousd(self) -> int:
        return (self.cache_saved_nanousd + self.routing_saved_nanousd + self.fallback_saved_nanousd
                + self.prefix_saved_nanousd + self.bulk_saved_nanousd + self.cascade_saved_nanousd)


#: The charge of a request whose tier is missing from the price book.
UNPRICED = Charge(cost_nanousd=0, counterfactual_nanousd=0, priced=False)


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

    @field_validator("cached_input_per_mtok")
    @classmethod
    def _cached_is_not_dearer(cls, value: Decimal, info: ValidationInfo) -> Decimal:
        # The prefix-cache lever is the discount of a cached token: a dearer one would be a negative
        # saving, and is a typo (a provider's cache *writes* may cost more; reads, priced here, less).
        full = info.data.get("input_per_mtok")
        if full is not None and value > full:
            raise ValueError(f"{value} is above input_per_mtok ({full}): a cached prompt token costs at most "
                             "a fresh one")
        return value


@dataclass(frozen=True)
class _Tokens:
    prompt: int
    cached: int
    completion: int


class PriceBook(BaseModel):
    """The price book file (``infra/config/pricebook.yaml``), validated at start-up."""

    model_config = ConfigDict(extra="forbid")

    currency: Literal["USD"] = Field(description="Prices and reports are in US dollars.")
    tiers: dict[str, TierPrice] = Field(min_length=1, description="Prices per tier name.")
    reference_tier: None = Field(
        default=None, description="Retired: every request's counterfactual is now its own (see the module).")

    @field_validator("reference_tier", mode="before")
    @classmethod
    def _retired(cls, value: object) -> None:
        # A fixed reference tier priced every request's counterfactual on one model: a ratio set in
        # config, not a saving. Say so rather than let an old file start and mean something else.
        if value is not None:
            raise ValueError("no longer used: each request's counterfactual is the tier it would have used "
                             "without routing (routing.default_tier in tiers.yaml for 'auto'); remove this key")
        return None

    def price(self, event: UsageEvent) -> Charge:
        """The cost, counterfactual and levers of ``event`` (see the module docstring).

        Raises ``UnknownTier`` when the tier that answered has no price; the caller decides what an
        unpriced request means (accounting records it at cost 0, flagged, rather than lose it).

        A fallback (``fallback_from`` set) is not a choice the router made: the tier that was down
        picked the tier that answered. Its tier difference goes to ``fallback_saved_nanousd`` and
        ``routing_saved_nanousd`` is 0, so the router is never credited with an outage's saving (a
        cheaper fallback is degraded service, not thrift) nor charged for a dearer one.
        """
        tier = self.tiers.get(event.tier)
        if tier is None:
            raise UnknownTier(event.tier, sorted(self.tiers))
        cf_name = self.counterfactual_tier(event)
        cf = self.tiers[cf_name]
        # Cached tokens are a subset of the prompt; clamp a producer's over-count so a cost never
        # goes negative.
        own = _Tokens(event.prompt_tokens, min(event.cached_prompt_tokens, event.prompt_tokens),
                      event.completion_tokens)
        asked = own
        if event.cache_outcome in CACHE_HITS:
            # Uncached, the request would have made the answer it was served (at least its own tokens).
            asked = _Tokens(max(event.cache_source_prompt_tokens, own.prompt), 0,
                            max(event.cache_source_completion_tokens, own.completion))
        bulk = event.priority is Priority.BULK
        c0 = _to_nanos(_full(asked, cf))
        c1 = _to_nanos(_full(own, cf))
        c2 = _to_nanos(_full(own, tier))
        c3 = _to_nanos(_actual(own, tier, bulk=False))
        c4 = _to_nanos(_actual(own, tier, bulk))
        c5 = c4 + self._escalation(event, bulk)
        tier_change = c1 - c2
        return Charge(
            cost_nanousd=c5, counterfactual_nanousd=c0, counterfactual_tier=cf_name,
            cache_saved_nanousd=c0 - c1,
            routing_saved_nanousd=0 if event.fallback_from else tier_change,
            fallback_saved_nanousd=tier_change if event.fallback_from else 0,
            prefix_saved_nanousd=c2 - c3, bulk_saved_nanousd=c3 - c4, cascade_saved_nanousd=c4 - c5,
            shadow=self._shadow(event, own, bulk),
        )

    def counterfactual_tier(self, event: UsageEvent) -> str:
        """The tier ``event``'s counterfactual is priced on: the one it names, else (an older
        producer) the tier that made a cached answer it was served, else the tier that answered.
        A named tier without a price is skipped: no saving is claimed that cannot be priced."""
        hit_source = event.cache_source_tier if event.cache_outcome in CACHE_HITS else None
        for name in (event.counterfactual_tier, hit_source, event.tier):
            if name is not None and name in self.tiers:
                return name
        raise UnknownTier(event.tier, sorted(self.tiers))

    def _escalation(self, event: UsageEvent, bulk: bool) -> int:
        """A cascade's failed weak attempt: its tokens on the tier that made them (none cached: the
        event does not say), charged on top. 0 when there was none, or its tier has no price."""
        weak = self.tiers.get(event.escalated_from or "")
        if weak is None:
            return 0
        attempt = _Tokens(event.escalation_prompt_tokens, 0, event.escalation_completion_tokens)
        return _to_nanos(_actual(attempt, weak, bulk))

    def _shadow(self, event: UsageEvent, own: _Tokens, bulk: bool) -> tuple[ShadowCharge, ...]:
        # The live pick is the tier the policy chose, before any fallback moved the request.
        live = self.tiers.get(event.fallback_from or event.tier)
        charges: dict[str, ShadowCharge] = {}
        for pick in event.route_shadow:
            if pick.policy in charges:
                continue  # one candidate per name: the first pick counts
            tier = self.tiers.get(pick.tier)
            if tier is None or live is None:
                charges[pick.policy] = ShadowCharge(pick.policy, None, None)
            else:
                charges[pick.policy] = ShadowCharge(pick.policy, _to_nanos(_actual(own, tier, bulk)),
                                                    _to_nanos(_actual(own, live, bulk)))
        return tuple(charges.values())


def _full(tokens: _Tokens, tier: TierPrice) -> Decimal:
    """``tokens`` on ``tier`` at full price: every prompt token uncached, no discount."""
    with localcontext(prec=_PRECISION):
        return tokens.prompt * tier.input_per_mtok + tokens.completion * tier.output_per_mtok


def _actual(tokens: _Tokens, tier: TierPrice, bulk: bool) -> Decimal:
    """``tokens`` on ``tier`` as charged: cached prompt tokens at the cached price, bulk discounted."""
    with localcontext(prec=_PRECISION):
        total = ((tokens.prompt - tokens.cached) * tier.input_per_mtok + tokens.cached * tier.cached_input_per_mtok
                 + tokens.completion * tier.output_per_mtok)
        return total * tier.batch_discount if bulk else total


def _to_nanos(per_mtok_total: Decimal) -> int:
    """Dollars-per-million-tokens times tokens, as whole nano-dollars (rounded half to even)."""
    with localcontext(prec=_PRECISION):
        return int((per_mtok_total * _NANOS_PER_MTOK_PRICE).to_integral_value(rounding=ROUND_HALF_EVEN))


def nanos_to_usd(nanos: int) -> str:
    """Nano-dollars as an exact decimal string of dollars, e.g. 1500 -> '0.000001500'."""
    return f"{Decimal(nanos).scaleb(-9):.9f}"
