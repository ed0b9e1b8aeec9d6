"""Every Prometheus metric skinflint exposes, named once.

Naming: ``skinflint_<what>_<unit>`` (``_total`` for counters), units spelled out (seconds,
tokens, usd). Labels are low-cardinality only: ``tenant``, ``tier``, ``priority``, ``status``
(an HTTP status code), ``outcome``, ``stage``, ``kind``, the cache's ``mode`` (on, shadow)
and ``match`` (true, false, n/a), and routing's ``policy`` (a configured policy's name), ``live_tier``,
``fallback`` (a tier) and ``embedded``. Never a request id, a prompt or a key.
A lever adds its counters here, next to these, and reports through the same labels.

Each service process registers what it uses in prometheus-client's default registry, which
also carries the process collector (CPU, memory, open files) that comes with it; ``/metrics``
on the service's health port (ingress: its HTTP port) serves that registry. Plain module: no
framework imports.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from contracts.v1 import UsageEvent

#: Request latencies: from a few milliseconds (a cache hit, an error) to minutes (long answers).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: skinflint's own time on an answer's path: sub-millisecond to tens of milliseconds.
OVERHEAD_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

# --- ingress: what clients see ------------------------------------------------------------
REQUESTS = Counter(
    "skinflint_requests_total",
    "Chat completion requests answered, by tenant, tier, priority and HTTP status "
    "(tier 'none' when the request failed before a tier was chosen).",
    ["tenant", "tier", "priority", "status"],
)
REQUEST_DURATION = Histogram(
    "skinflint_request_duration_seconds",
    "End to end, from the request's arrival at ingress to the last byte of its answer.",
    ["tier", "priority", "stream"], buckets=LATENCY_BUCKETS_S,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "skinflint_time_to_first_token_seconds",
    "Streaming requests: from arrival at ingress to the first token relayed to the client.",
    ["tier", "priority"], buckets=LATENCY_BUCKETS_S,
)
OVERHEAD = Histogram(
    "skinflint_overhead_seconds",
    "skinflint's own time on a whole answer: end to end less the engine's time and the client's upload.",
    ["tier", "priority"], buckets=OVERHEAD_BUCKETS_S,
)
INFLIGHT = Gauge("skinflint_inflight_requests", "Requests ingress is answering now.", ["priority"])

# --- workers: the engine --------------------------------------------------------------------
QUEUE_WAIT = Histogram(
    "skinflint_queue_wait_seconds",
    "From a worker taking a task to its engine starting on it (bulk: from the pull).",
    ["tier", "priority"], buckets=LATENCY_BUCKETS_S,
)
ENGINE_DURATION = Histogram(
    "skinflint_engine_duration_seconds",
    "Time a request spent in the inference engine.",
    ["tier", "priority"], buckets=LATENCY_BUCKETS_S,
)
TOKENS = Counter(
    "skinflint_tokens_total",
    "Tokens processed by the engines: kind is prompt (all prompt tokens), cached_prompt (the part "
    "served from the prefix cache) or completion.",
    ["tier", "priority", "kind"],
)
ENGINE_SLOTS = Gauge("skinflint_engine_slots", "Sequences a worker's engine runs at once.", ["tier"])
ENGINE_SLOTS_IN_USE = Gauge(
    "skinflint_engine_slots_in_use", "Engine slots held by requests now, by priority.", ["tier", "priority"])
BULK_PREEMPTIONS = Counter(
    "skinflint_bulk_preemptions_total",
    "Bulk tasks a worker handed back to the queue unfinished because chat arrived (run again later, charged once).",
    ["tier"])
BULK_BACKLOG = Gauge(
    "skinflint_bulk_backlog_messages",
    "Bulk tasks waiting in the tier's work queue (not yet pulled by any worker).", ["tier"])

# --- upstream tiers: the provider behind an upstream worker ---------------------------------
UPSTREAM_REQUESTS = Counter(
    "skinflint_upstream_requests_total",
    "Requests an upstream worker forwarded to its provider, by outcome: ok, client_error (the "
    "provider refused the request: a 400), auth_error, rate_limited, server_error, connection_error, "
    "timeout, bad_answer (not an OpenAI answer), breaker_open (refused unsent), aborted.",
    ["tier", "outcome"],
)
UPSTREAM_RETRIES = Counter(
    "skinflint_upstream_retries_total", "Requests to a provider sent again after a failure before any output.",
    ["tier"])
UPSTREAM_BREAKER_STATE = Gauge(
    "skinflint_upstream_breaker_state", "The provider's circuit breaker: 0 closed, 1 half-open, 2 open.", ["tier"])
UPSTREAM_DURATION = Histogram(
    "skinflint_upstream_seconds",
    "A forwarded request at its provider, retries included: from the first attempt to the answer's last byte.",
    ["tier"], buckets=(0.001, 0.0025, 0.005, *LATENCY_BUCKETS_S[1:]),
)

# --- every stage on the routing slip (the worker is the 'infer' stage) -----------------------
STAGE_OUTCOMES = Counter(
    "skinflint_stage_outcomes_total",
    "Tasks a stage finished, by outcome: ok, error, aborted (inference); forwarded, answered, "
    "error (other stages); levers add their own (hit, miss, ...).",
    ["stage", "priority", "outcome"],
)

STAGE_SKIPS = Counter(
    "skinflint_stage_skips_total",
    "Requests that went on without an optional stage, by why: unavailable (no replica took the "
    "task), timeout, refused, failed (the stage raised).",
    ["stage", "outcome"],
)

# --- the cache stage ----------------------------------------------------------------------------
#: Cache lookups: sub-millisecond (exact) to tens of milliseconds (a large semantic partition).
LOOKUP_BUCKETS_S = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25)
CACHE_LOOKUPS = Counter(
    "skinflint_cache_lookups_total",
    "Requests the cache stage handled, by mode (on, shadow) and outcome (exact, semantic, miss, "
    "bypass: the request or tenant asked not to look up).",
    ["mode", "outcome"],
)
CACHE_HITS = Counter(
    "skinflint_cache_hits_total", "Answers served from the cache, by kind (exact, semantic).", ["kind"])
CACHE_LOOKUP_DURATION = Histogram(
    "skinflint_cache_lookup_seconds",
    "Time of one lookup, by kind of step: exact (key-value read), embed (the query embedding), "
    "semantic (index search and verifier), total (the whole stage).",
    ["kind"], buckets=LOOKUP_BUCKETS_S,
)


def observe_cache_lookup(mode: str, outcome: str, seconds: float, served: bool) -> None:
    """One cache lookup concluded (by the cache stage, or by ingress's exact read): its time, its
    outcome, and a hit when it was served."""
    CACHE_LOOKUP_DURATION.labels("total").observe(seconds)
    CACHE_LOOKUPS.labels(mode, outcome).inc()
    if served:
        CACHE_HITS.labels(outcome).inc()


CACHE_STORES = Counter(
    "skinflint_cache_stores_total",
    "Announced answers the cache learned (outcome=ok) or declined, by why (services/cache/fill.py: "
    "skipped, error, partial, cancelled, truncated, sampled; failed: the write failed).",
    ["outcome"],
)
CACHE_EVICTIONS = Counter(
    "skinflint_cache_evictions_total",
    "Cache entries removed, by kind: tenant, tag, all (purges; the larger of the exact and semantic "
    "counts), expired (semantic index points past their TTL, swept).",
    ["kind"],
)
CACHE_SHADOW = Counter(
    "skinflint_cache_shadow_total",
    "Shadow lookups: what the cache would have served (kind: exact, semantic, miss) and, for a "
    "would-be hit, whether the model's answer then matched it (match: true, false; n/a for a miss).",
    ["kind", "match"],
)
CACHE_OVERLAPS = Counter(
    "skinflint_cache_overlaps_total",
    "Exact misses handed to the model before the semantic lookup decided (the worker holds its "
    "answer until the verdict).",
)
CACHE_VERDICTS = Counter(
    "skinflint_cache_verdicts_total",
    "Verdicts a worker waited for on tasks handed on before the cache decided: served (the cache "
    "answered; the model's work was dropped), released (a miss: the model answers), timeout (none "
    "came in time: the model answers, the cache recorded as skipped).",
    ["verdict"],
)
CACHE_VERDICT_WAIT = Histogram(
    "skinflint_cache_verdict_wait_seconds",
    "How long a worker held an answer ready to send, waiting for the cache's verdict (0 when the "
    "verdict came before the model's first output).",
    buckets=LOOKUP_BUCKETS_S,
)
CACHE_SAVED = Counter(
    "skinflint_cache_saved_usd_total",
    "What the cached answers served saved: each request priced on its counterfactual tier, less what "
    "the hit cost (tier: the one that made the answer).",
    ["tenant", "tier"],
)

# --- accounting: money ------------------------------------------------------------------------
COST = Counter(
    "skinflint_cost_usd_total",
    "Dollars charged (kind=actual) and the counterfactual (kind=reference): the same requests on the "
    "tier they would have used without routing, uncached and undiscounted.",
    ["tenant", "tier", "priority", "kind"],
)
USAGE_EVENTS = Counter(
    "skinflint_usage_events_total",
    "Usage events accounting handled: recorded, duplicate (already charged), unpriced (recorded at "
    "cost 0), rejected (poison), retried (ledger write failed, redelivered later).",
    ["outcome"],
)


def observe_usage(event: UsageEvent, stage: str) -> None:
    """What one finished task tells the metrics (its usage event carries all of it)."""
    tier, priority = event.tier, event.priority.value
    QUEUE_WAIT.labels(tier, priority).observe(event.queue_seconds)
    if event.status != "error" or event.engine_seconds > 0:
        ENGINE_DURATION.labels(tier, priority).observe(event.engine_seconds)
    TOKENS.labels(tier, priority, "prompt").inc(event.prompt_tokens)
    TOKENS.labels(tier, priority, "cached_prompt").inc(event.cached_prompt_tokens)
    TOKENS.labels(tier, priority, "completion").inc(event.completion_tokens)
    STAGE_OUTCOMES.labels(stage, priority, event.status).inc()
    if event.cache_shadow != "none":
        match = "n/a" if event.cache_shadow_match is None else str(event.cache_shadow_match).lower()
        CACHE_SHADOW.labels(event.cache_shadow, match).inc()

# --- tiers and routing ----------------------------------------------------------------------
#: A routing decision: tens of microseconds (rules, a score) to milliseconds (an embedding).
DECISION_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)
ROUTE_DECISIONS = Counter(
    "skinflint_route_decisions_total",
    "Routed requests by the tier picked and what picked it (policy: learned, length, rule, min_tier, "
    "default).",
    ["tier", "policy"],
)
ROUTE_DECISION_DURATION = Histogram(
    "skinflint_route_decision_seconds",
    "The classifier's time on one decision, by whether it had to embed the question itself.",
    ["embedded"], buckets=DECISION_BUCKETS_S,
)
ROUTE_SHADOW = Counter(
    "skinflint_route_shadow_total",
    "Candidate policies' picks beside the live ones (tier: the candidate's, live_tier: the live policy's).",
    ["policy", "tier", "live_tier"],
)
TIER_FALLBACKS = Counter(
    "skinflint_tier_fallbacks_total",
    "Tasks sent to a tier's fallback because the tier was unavailable.",
    ["tier", "fallback"],
)
ROUTING_SAVED = Counter(
    "skinflint_routing_saved_usd_total",
    "What routing saved: the request priced at its counterfactual tier less at the tier that answered, "
    "when that was cheaper (a dearer one: skinflint_routing_extra_cost_usd_total), per tenant and tier.",
    ["tenant", "tier"],
)
ROUTING_EXTRA_COST = Counter(
    "skinflint_routing_extra_cost_usd_total",
    "What routing cost beyond the counterfactual when it sent requests to a dearer tier (routing's net "
    "saving is skinflint_routing_saved_usd_total minus this), per tenant and the tier that answered.",
    ["tenant", "tier"],
)
LEVER_SAVED = Counter(
    "skinflint_lever_saved_usd_total",
    "What the prefix cache (kind=prefix: cached prompt tokens' discount) and bulk priority (kind=bulk: "
    "the batch discount) saved, each after the levers before it.",
    ["tenant", "tier", "kind"],
)
CASCADE_ESCALATIONS = Counter(
    "skinflint_cascade_escalations_total",
    "Weak-tier answers the cascade's check failed, by tier and outcome: why it escalated (empty, cut_short, "
    "repetitive), or unavailable (the strong tier took no task: the weak answer was sent).",
    ["tier", "outcome"],
)
CASCADE_COST = Counter(
    "skinflint_cascade_cost_usd_total",
    "What the cascade's failed weak attempts cost on top of the answers (accounting), per tenant and the "
    "weak tier that made them.",
    ["tenant", "tier"],
)

# -- batch jobs (services.batch) ----------------------------------------------------------------
BATCH_ITEMS = Counter(
    "skinflint_batch_items_total",
    "Batch items finished, by outcome: answered, failed (the endpoint's error), unread (a line refused on "
    "reading), unrun (cancelled or expired before it ran).", ["outcome"])
BATCH_JOBS = Counter("skinflint_batch_jobs_total", "Batch jobs ended, by final status.", ["status"])
BATCH_IN_FLIGHT = Gauge("skinflint_batch_items_in_flight", "Batch items handed to the stages and not yet answered.")
BATCH_DISPATCHES = Counter(
    "skinflint_batch_dispatches_total",
    "Batch items handed to the stages, by kind: first, again (a redelivered work message: the bulk stream "
    "drops a copy still queued).", ["kind"])
