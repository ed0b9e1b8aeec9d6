"""What the cache stage is asked (``CacheControl``) and what it did (``CacheNote``).

Both travel on the task envelope: ingress sets the control from the tenant's policy and the
request's headers; the cache stage writes the note; the worker copies the note onto its usage
event and its replies, so the client's headers, the metrics and the ledger all say the same.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from contracts.v1.chat import WireModel


class CacheOutcome(StrEnum):
    """How the cache stage took part in one request (a metric label and a ledger value)."""

    #: The cache stage is not on the request's itinerary (switched off for the deployment).
    NONE = "none"
    EXACT = "exact"
    SEMANTIC = "semantic"
    MISS = "miss"
    #: The request (a header) or the tenant's policy asked not to look up.
    BYPASS = "bypass"
    #: The stage was down or failed: the request went on to the model without it.
    SKIPPED = "skipped"


class CacheMode(StrEnum):
    """A tenant's cache policy: serve hits, only record what would have been served, or neither."""

    ON = "on"
    SHADOW = "shadow"
    OFF = "off"


class CacheControl(WireModel):
    """What this request lets the cache do (tenant policy merged with the request's headers)."""

    mode: CacheMode = Field(default=CacheMode.ON, description="on, shadow (look up, never serve) or off.")
    lookup: bool = Field(default=True, description="False: do not serve from the cache (Cache-Control: no-cache).")
    store: bool = Field(default=True, description="False: do not learn this answer (Cache-Control: no-store).")
    max_age_s: float | None = Field(
        default=None, ge=0, description="Serve only entries younger than this (Cache-Control: max-age)."
    )
    ttl_s: float | None = Field(default=None, gt=0, description="How long to keep this answer (default: the stage's).")
    tags: list[str] = Field(default_factory=list, description="Invalidation tags for this answer, e.g. 'kb:v3'.")
    store_sampled: bool = Field(
        default=False, description="The tenant opts in to caching answers sampled at temperature above 0."
    )


class CacheNote(WireModel):
    """What the cache stage did for one request."""

    outcome: CacheOutcome = Field(description="exact, semantic, miss, bypass or skipped.")
    similarity: float | None = Field(default=None, description="Cosine similarity of the semantic match served.")
    score: float | None = Field(default=None, description="The verifier's score (log-odds) of the match served.")
    reason: str | None = Field(default=None, description="Why the stage was skipped or bypassed.")
    age_s: float | None = Field(default=None, description="Age of the entry served, seconds.")
    source_tier: str | None = Field(default=None, description="Tier that produced the answer served.")
    source_prompt_tokens: int = Field(default=0, ge=0, description="Prompt tokens the served answer cost.")
    source_completion_tokens: int = Field(default=0, ge=0, description="Completion tokens the served answer cost.")
    fill: bool = Field(default=False, description="Announce the model's answer so the cache may learn it.")
    shadow: Literal["none", "exact", "semantic", "miss"] = Field(
        default="none", description="Shadow mode: what the cache would have served (nothing is served)."
    )
    shadow_similarity: float | None = Field(default=None, description="Similarity of the shadow match.")
    shadow_answer_sha256: str | None = Field(
        default=None, description="SHA-256 of the normalised answer the shadow match would have served."
    )

