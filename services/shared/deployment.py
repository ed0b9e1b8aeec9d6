"""The deployment's configuration, checked as a whole at start-up.

A mistake found here stops the service before it connects to anything, with a message that
names the file or environment variable and the key, instead of surfacing later as a 503 on
every request or a request charged $0 without a word. Plain logic: no bus code.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from contracts.subjects import INFER_STAGE, KNOWN_STAGES
from services.accounting.pricing import PriceBook
from services.shared.settings import ConfigError, env_name, load_config_file
from services.shared.tiers import TiersFile, load_tiers


def check_pipeline(pipeline: Sequence[str], known: Collection[str] = KNOWN_STAGES,
                   source: str = env_name("pipeline")) -> None:
    """The itinerary every request gets: known stages, each once, ending with inference."""
    if not pipeline:
        raise ConfigError(f"{source}: the pipeline is empty; it must end with {INFER_STAGE!r}")
    for i, stage in enumerate(pipeline):
        if stage not in known:
            raise ConfigError(f"{source}.{i}: {stage!r} is not a stage skinflint has "
                              f"(known stages: {', '.join(known)})")
        if stage in pipeline[:i]:
            raise ConfigError(f"{source}.{i}: stage {stage!r} is listed twice")
    if pipeline[-1] != INFER_STAGE:
        raise ConfigError(f"{source}: the last stage must be {INFER_STAGE!r} (it answers what no "
                          f"earlier stage did), not {pipeline[-1]!r}")


def check_optional(optional: Sequence[str], known: Collection[str] = KNOWN_STAGES,
                   source: str = env_name("optional_stages")) -> None:
    """Stages marked optional are stages skinflint has, and inference is not one of them (one
    that is not on the pipeline is simply not visited)."""
    for i, stage in enumerate(optional):
        if stage == INFER_STAGE:
            raise ConfigError(f"{source}.{i}: {INFER_STAGE!r} cannot be optional: it answers what no other "
                              "stage did")
        if stage not in known:
            raise ConfigError(f"{source}.{i}: {stage!r} is not a stage skinflint has "
                              f"(known stages: {', '.join(known)})")


def load_pricebook(path: str) -> PriceBook:
    """The price book, validated (``services.accounting.pricing.PriceBook``)."""
    return load_config_file(path, PriceBook)


def check_priced(answerers: Mapping[str, str], pricebook: PriceBook, pricebook_file: str) -> None:
    """Every tier that can answer has a price. ``answerers`` maps the setting that names a tier
    (``SF_MODELS.smollm2-135m``, ``SF_TIER``) to that tier."""
    for where, tier in answerers.items():
        if tier not in pricebook.tiers:
            raise ConfigError(f"{where}: tier {tier!r} has no price in {pricebook_file} "
                              f"(tiers.{tier} is missing; priced tiers: {', '.join(sorted(pricebook.tiers))})")


def check_tiers(tiers_file: str, pricebook_file: str) -> TiersFile:
    """The tiers file, validated, with a price for every tier it has (a tier nobody priced would
    be charged $0 without a word)."""
    tiers = load_tiers(tiers_file)
    check_priced({f"{tiers_file}: tiers.{name}": name for name in tiers.tiers}, load_pricebook(pricebook_file),
                 pricebook_file)
    return tiers
