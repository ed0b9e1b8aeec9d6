"""Events and control messages: usage, worker heartbeats, cancellation, hop acknowledgements."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from contracts.subjects import Priority
from contracts.v1.cache import CacheControl, CacheNote
from contracts.v1.chat import ChatRequest, WireModel
from contracts.v1.envelope import ShadowPick
from contracts.v1.replies import Final


class UsageEvent(WireModel):
    """One finished request, as accounting charges it. ``request_id`` makes charging idempotent."""

    request_id: str = Field(description="Idempotency key: a redelivered event is charged once.")
    tenant: str = Field(description="Tenant charged.")
    api_key_id: str = Field(default="", description="Non-secret id of the API key used.")
    model: str = Field(description="Public model name.")
    tier: str = Field(description="Tier that answered (the price book is per tier).")
    priority: Priority = Field(description="interactive or bulk.")
    status: Literal["ok", "error", "aborted"] = Field(description="How the request ended.")
    prompt_tokens: int = Field(ge=0, description="Prompt tokens processed.")
    cached_prompt_tokens: int = Field(default=0, ge=0, description="Prompt tokens from prefix cache.")
    completion_tokens: int = Field(ge=0, description="Tokens generated.")
    queue_seconds: float = Field(default=0.0, ge=0.0, description="Wait for a worker slot.")
    engine_seconds: float = Field(default=0.0, ge=0.0, description="Time inside the engine.")
    worker: str = Field(default="", description="Replica that served it.")
    cache_outcome: str = Field(
        default="none", description="Cache result: none, exact, semantic, miss, bypass, skipped (CacheOutcome)."
    )
    cache_similarity: float | None = Field(default=None, description="Similarity of the semantic match served.")
    cache_source_tier: str | None = Field(
        default=None, description="A hit: the tier that produced the answer served (prices what it saved)."
    )
    cache_source_prompt_tokens: int = Field(default=0, ge=0, description="A hit: prompt tokens the answer cost.")
    cache_source_completion_tokens: int = Field(
        default=0, ge=0, description="A hit: completion tokens the answer cost."
    )
    cache_shadow: str = Field(
        default="none", description="Shadow mode: what the cache would have served (none, exact, semantic, miss)."
    )
    cache_shadow_similarity: float | None = Field(default=None, description="Similarity of the shadow match.")
    cache_shadow_match: bool | None = Field(
        default=None, description="Shadow hit: whether the model's answer equals the one it would have served."
    )
    counterfactual_tier: str | None = Field(
        default=None, description="The tier the request would have used without routing (the model it named, or "
        "the default for 'auto'); none: the tier that answered.")
    route_policy: str | None = Field(default=None, description="Routed: what decided the tier (RouteDecision.policy).")
    route_score: float | None = Field(default=None, description="Routed: the policy's score.")
    route_threshold: float | None = Field(default=None, description="Routed: the threshold it was held against.")
    route_shadow: list[ShadowPick] = Field(default_factory=list, description="Candidate policies' picks.")
    fallback_from: str | None = Field(default=None, description="The tier that was unavailable, when its fallback "
                                      "answered.")
    escalated_from: str | None = Field(default=None, description="Cascade: the tier whose answer failed the check "
                                       "before this tier answered.")
    escalation_prompt_tokens: int = Field(default=0, ge=0, description="Cascade: prompt tokens of the failed attempt.")
    escalation_completion_tokens: int = Field(default=0, ge=0, description="Cascade: completion tokens of the "
                                              "failed attempt.")
    occurred_at: float = Field(description="Unix time the request finished.")
    job_id: str | None = Field(
        default=None, description="The bulk job (batch id) the request was an item of; none for a request on "
        "its own. A job's totals are the sum of its items' charges.")


class WorkerHeartbeat(WireModel):
    worker_id: str = Field(description="Unique id of the worker process.")
    tier: str = Field(description="Tier it serves.")
    model: str = Field(description="Public model name it serves.")
    slots: int = Field(ge=1, description="Sequences it runs at once.")
    inflight_interactive: int = Field(ge=0, description="Interactive requests it holds.")
    inflight_bulk: int = Field(ge=0, description="Bulk requests it holds.")
    draining: bool = Field(default=False, description="Shutting down: takes no new work.")
    sent_at: float = Field(description="Unix time of the heartbeat.")
    interval_s: float = Field(description="Seconds until the next heartbeat.")


class CancelRequest(WireModel):
    request_id: str = Field(description="Stop working on this request: nobody waits for it.")


class HopAck(WireModel):
    """The answer to a stage hand-off: the next stage has the task (or refuses it)."""

    accepted: bool = Field(description="Whether the stage took the task.")
    stage: str = Field(description="The stage that answered.")
    instance: str = Field(description="The replica that answered.")
    reason: str | None = Field(default=None, description="Why it refused, if it did.")
    retry: bool = Field(default=False, description="Whether another replica may take it.")
    status: int | None = Field(
        default=None, ge=400, le=599, description="A refusal for good: the HTTP status it means (default 400). "
        "503: the stage cannot serve now (an upstream provider is down); the sender tries the tier's fallback.")
    holds: bool = Field(
        default=False,
        description="The stage keeps the task until it answers (inference) and sends heartbeats; "
        "the sender may watch them to notice the holder dying.",
    )


class UsageQuery(WireModel):
    tenant: str | None = Field(default=None, description="Only this tenant; None for all (admin).")
    since: float | None = Field(default=None, description="Only requests after this Unix time.")
    job_id: str | None = Field(default=None, description="Only the items of this bulk job (batch id).")


class UsageRow(WireModel):
    """Totals of one tenant's requests answered by one tier. Money is a decimal string of dollars.

    ``reference_cost_usd`` - ``cost_usd`` is what the levers saved, split in order (each credited
    only with what it changed after the ones before it): cache, routing, fallback, prefix, bulk,
    cascade.
    Rows recorded before the split existed (ledger revision < 0003) count in the totals but in no lever.
    """

    tenant: str = Field(description="Tenant.")
    tier: str = Field(description="Tier that answered.")
    requests: int = Field(description="Requests charged.")
    prompt_tokens: int = Field(description="Prompt tokens.")
    cached_prompt_tokens: int = Field(description="Prompt tokens from prefix cache.")
    completion_tokens: int = Field(description="Generated tokens.")
    cost_usd: str = Field(description="Actual cost, decimal string.")
    reference_cost_usd: str = Field(
        description="The counterfactual: each request as sent, on the tier it would have used without routing "
        "(the model it named, or the default tier for 'auto'), uncached, full prompt, no batch discount.")
    cache_hits: int = Field(default=0, description="Requests answered from the cache (exact or semantic).")
    cache_saved_usd: str = Field(
        default="0.000000000",
        description="The cache lever: the answers served, priced on each request's counterfactual tier, less "
        "what the hits themselves cost there.",
    )
    routed_requests: int = Field(default=0, description="Requests whose tier a routing policy picked.")
    routing_saved_usd: str = Field(
        default="0.000000000",
        description="The routing lever: the requests' own tokens on their counterfactual tier less on the tier "
        "that answered, full price; negative when routing sent them to a dearer tier. Fallbacks are not in it.")
    fallbacks: int = Field(default=0, description="Requests answered by a fallback tier (theirs was unavailable).")
    fallback_saved_usd: str = Field(
        default="0.000000000",
        description="The same tier difference for fallbacks: an outage's effect, not a saving anyone chose "
        "(negative when the fallback was dearer).")
    prefix_saved_usd: str = Field(
        default="0.000000000", description="The prefix-cache lever: cached prompt tokens' discount on the tier.")
    bulk_saved_usd: str = Field(default="0.000000000", description="The bulk lever: the batch discount.")
    escalations: int = Field(default=0, description="Requests the cascade escalated: the weak tier's answer failed "
                             "the cheap check and this tier answered instead.")
    cascade_saved_usd: str = Field(
        default="0.000000000", description="The cascade's cost as a (never positive) saving: the failed weak "
        "attempts' tokens, charged on top.")


class ShadowPolicyRow(WireModel):
    """A candidate routing policy run beside the live one (picks recorded, never acted on), compared
    with the live policy on the same requests. Costs price each request's own tokens on the picked
    tier exactly as the actual cost is priced, so where the two agree they cost the same."""

    policy: str = Field(description="The candidate's name (routing.shadow[].name).")
    requests: int = Field(description="Routed requests it ran on.")
    agreed: int = Field(description="Of those, how many it sent to the tier the live policy picked.")
    tiers: dict[str, int] = Field(default_factory=dict, description="Its picks per tier.")
    live_tiers: dict[str, int] = Field(default_factory=dict, description="The live picks per tier, same requests.")
    cost_usd: str = Field(description="What its picks would have cost.")
    live_cost_usd: str = Field(description="What the live picks cost (before any fallback), same requests.")
    unpriced: int = Field(default=0, description="Requests left out of both costs: a tier picked has no price.")


class UsageReport(WireModel):
    rows: list[UsageRow] = Field(description="Totals per tenant and tier.")
    shadow: list[ShadowPolicyRow] = Field(
        default_factory=list, description="Shadow routing policies against the live one, over the same requests.")


class AnswerAnnounced(WireModel):
    """A whole answer a worker gave, announced after the reply so the cache may learn it."""

    request_id: str = Field(description="The request answered.")
    tenant: str = Field(description="Tenant that asked.")
    request: ChatRequest = Field(description="The chat request, as on the envelope.")
    control: CacheControl = Field(description="What the request lets the cache do.")
    embedding: list[float] | None = Field(default=None, description="The query embedding the cache computed.")
    final: Final = Field(description="The answer.")


class CacheVerdict(WireModel):
    """The cache stage's decision on a task it handed on before deciding (``cache_pending``).

    Sent to the worker that took the task. ``serve``: the cache answered the client itself (a
    semantic hit); the worker drops its answer unsent and uncharged. Otherwise the worker answers,
    and records ``note`` (and learns with ``query_embedding``) as if the stage had decided first.
    """

    request_id: str = Field(description="The task decided on.")
    serve: bool = Field(description="True: the cache served the answer; the worker sends nothing.")
    note: CacheNote = Field(description="What the cache stage did, for the worker's usage event and replies.")
    query_embedding: list[float] | None = Field(
        default=None, description="The query embedding the stage computed, for learning the model's answer.")


class CachePurge(WireModel):
    """Remove cached answers: a tenant's, those with a tag (of one tenant, or all), or everything."""

    tenant: str | None = Field(default=None, description="Only this tenant's entries; None: every tenant's.")
    tag: str | None = Field(default=None, description="Only entries stored with this tag.")


class CachePurged(WireModel):
    """The answer to a ``CachePurge``."""

    ok: bool = Field(description="Whether the purge ran.")
    exact_removed: int | None = Field(default=None, description="Exact entries removed, when known.")
    semantic_removed: int | None = Field(default=None, description="Semantic index points removed, when known.")
    error: str | None = Field(default=None, description="What went wrong, if it did not run.")
