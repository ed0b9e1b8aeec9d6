"""The task envelope: one request travelling through the stages on its routing slip."""

from __future__ import annotations

from pydantic import Field

from contracts.subjects import Priority
from contracts.v1.cache import CacheControl, CacheNote
from contracts.v1.chat import ChatRequest, WireModel
from contracts.v1.replies import TokenUsage


class StageMark(WireModel):
    """When a stage held the task; wall-clock seconds, for traces and diagnostics."""

    stage: str = Field(description="Stage name, e.g. 'infer'.")
    instance: str = Field(description="Which replica of the stage handled it.")
    arrived_at: float = Field(description="Unix time the stage received the envelope.")


class ShadowPick(WireModel):
    """What a candidate policy, run beside the live one, would have picked (never acted on)."""

    policy: str = Field(description="The candidate's name (routing.shadow[].name).")
    tier: str = Field(description="The tier it would have sent the request to.")
    score: float | None = Field(default=None, description="Its score (how likely the strong tier is needed).")
    threshold: float | None = Field(default=None, description="Its threshold: strong at or above.")


class RouteDecision(WireModel):
    """How the classifier picked the tier of a routed request."""

    tier: str = Field(description="The tier picked.")
    policy: str = Field(description="What decided: 'rule:<name>', 'learned', 'length', 'min_tier', 'default'.")
    score: float | None = Field(default=None, description="The policy's score in [0, 1]: how likely the strong "
                                "tier is needed (none for a rule).")
    threshold: float | None = Field(default=None, description="The threshold the score was held against.")
    reason: str = Field(default="", description="A short human-readable why.")
    shadow: list[ShadowPick] = Field(default_factory=list, description="Candidate policies' picks.")
    cascade: bool = Field(default=False, description="The weak tier answers first; a failed check escalates.")


class Route(WireModel):
    """Where the task is to be answered; set by ingress, refined later by the classifier."""

    model: str = Field(description="The public model name the client asked for.")
    tier: str = Field(description="The tier whose workers answer: e.g. 'small'.")
    counterfactual_tier: str | None = Field(
        default=None, description="The tier the request would have used without routing (the model it named, "
        "or the configured default for 'auto'): what routing's savings are counted against.")
    routed: bool = Field(default=False, description="The classifier picks the tier (its stage is on the slip).")
    min_tier: str | None = Field(default=None, description="A tier the request asked not to go below "
                                 "(X-Skinflint-Min-Tier).")
    tenant_class: str | None = Field(default=None, description="The tenant's class, for routing rules.")
    decision: RouteDecision | None = Field(default=None, description="The classifier's decision, once made.")
    fallback_from: str | None = Field(default=None, description="The tier that was unavailable, when the task "
                                      "went to that tier's fallback instead.")
    escalated_from: str | None = Field(default=None, description="Cascade: the tier whose answer failed the cheap "
                                       "check; this one answers instead.")
    escalation_usage: TokenUsage | None = Field(default=None, description="Cascade: the tokens the failed attempt "
                                                "spent (charged on top, as the cascade's cost).")


class TaskEnvelope(WireModel):
    """A request on its way through the stages.

    Invariants: ``itinerary[0]`` is the stage that currently holds the task (it is removed as
    that stage forwards it); an envelope with an empty itinerary has nowhere to go and is answered
    with an error by whoever holds it. Stages only add enrichments, never rewrite the request.
    """

    request_id: str = Field(min_length=1, description="Unique id; also the idempotency key of charges.")
    tenant: str = Field(min_length=1, description="The tenant the API key belongs to.")
    api_key_id: str = Field(default="", description="Non-secret id of the API key used.")
    priority: Priority = Field(default=Priority.INTERACTIVE, description="interactive or bulk.")
    request: ChatRequest = Field(description="The validated chat request.")
    route: Route = Field(description="Model and tier to answer with.")
    reply_subject: str = Field(description="Where replies (chunks, final, error) are published.")
    itinerary: list[str] = Field(description="Stages still to visit, current one first.")
    deadline_at: float | None = Field(
        default=None, description="Unix time after which nobody waits for the answer any more."
    )
    received_at: float = Field(description="Unix time ingress received the request.")
    marks: list[StageMark] = Field(default_factory=list, description="Stages visited so far.")
    enrichments: dict[str, object] = Field(
        default_factory=dict,
        description="What stages learned (cache outcome, tier decision, context); keyed by stage.",
    )
    job_id: str | None = Field(default=None, description="The bulk job this task belongs to, if any.")
    optional: list[str] = Field(
        default_factory=list,
        description="Stages that may be skipped when no replica takes the task or it fails there "
        "(the request then goes on without them, and the skip is recorded).",
    )
    cache_control: CacheControl = Field(
        default_factory=CacheControl, description="What the request lets the cache do."
    )
    cache: CacheNote | None = Field(default=None, description="What the cache stage did, once it ran.")
    cache_exact_checked: bool = Field(
        default=False, description="Ingress read the exact cache for this request and found nothing: the cache "
        "stage goes straight to the semantic lookup.",
    )
    cache_pending: bool = Field(
        default=False, description="The cache stage handed the task on before deciding on a semantic match: "
        "the worker sends nothing (no reply, no usage event) until the stage's CacheVerdict, sent to it, arrives.",
    )
    query_embedding: list[float] | None = Field(
        default=None, description="Unit embedding of the last user turn, computed once (by the cache stage) "
        "for every later stage.",
    )
