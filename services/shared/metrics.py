"""Every Prometheus metric skinflint exposes, named once.

Naming: ``skinflint_<what>_<unit>`` (``_total`` for counters), units spelled out (seconds,
tokens, usd). Labels are low-cardinality only: ``tenant``, ``tier``, ``priority``, ``status``
(an HTTP status code), ``outcome``, ``stage``, ``kind``. Never a request id, a prompt or a key.
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
BULK_BACKLOG = Gauge(
    "skinflint_bulk_backlog_messages",
    "Bulk tasks waiting in the tier's work queue (not yet pulled by any worker).", ["tier"])

# --- every stage on the routing slip (the worker is the 'infer' stage) -----------------------
STAGE_OUTCOMES = Counter(
    "skinflint_stage_outcomes_total",
    "Tasks a stage finished, by outcome: ok, error, aborted (inference); forwarded, answered, "
    "error (other stages); levers add their own (hit, miss, ...).",
    ["stage", "priority", "outcome"],
)

# --- accounting: money ------------------------------------------------------------------------
COST = Counter(
    "skinflint_cost_usd_total",
    "Dollars charged (kind=actual) and what the same requests would have cost on the reference "
    "tier, uncached and undiscounted (kind=reference).",
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
