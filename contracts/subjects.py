"""Every NATS subject, JetStream stream and durable consumer name skinflint uses.

Subjects carry the contract version (``sf.v1``): a breaking change to a message means a new
version module and new subjects, so old and new services can run side by side during a rollout.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

VERSION_PREFIX = "sf.v1"

#: The stage name of the inference worker; its subject depends on the tier and priority.
INFER_STAGE = "infer"
#: The cache stage (exact and semantic answers); first on the itinerary, optional.
CACHE_STAGE = "cache"
#: The classifier stage (model routing): picks the tier of a routed request; optional.
CLASSIFIER_STAGE = "classifier"


class Priority(StrEnum):
    """How urgently a task must be answered; bulk work only fills capacity chat leaves free."""

    INTERACTIVE = "interactive"
    BULK = "bulk"


def infer_subject(tier: str, priority: Priority) -> str:
    """Subject a worker of ``tier`` takes ``priority`` work from."""
    return f"{VERSION_PREFIX}.infer.{tier}.{priority.value}"


def stage_subject(stage: str) -> str:
    """Subject of any stage other than inference (cache, classifier, retrieval, ...)."""
    return f"{VERSION_PREFIX}.stage.{stage}"


def reply_subject(instance_id: str, request_id: str) -> str:
    """Where the stages answer one request handled by ingress instance ``instance_id``."""
    return f"{VERSION_PREFIX}.reply.{instance_id}.{request_id}"


def reply_wildcard(instance_id: str) -> str:
    """The one subscription an ingress instance needs for all its replies."""
    return f"{VERSION_PREFIX}.reply.{instance_id}.*"


def bulk_result_subject(job_id: str) -> str:
    """Where the results of one bulk job are stored (a JetStream stream keeps them)."""
    return f"{VERSION_PREFIX}.bulk.result.{job_id}"


#: Usage events, one per finished (or failed) request; consumed by accounting.
USAGE_SUBJECT = f"{VERSION_PREFIX}.usage"
#: Workers announce themselves and their free capacity here every heartbeat interval.
HEARTBEAT_SUBJECT = f"{VERSION_PREFIX}.worker.heartbeat"
#: Ingress broadcasts here when a client goes away, so the engine stops generating.
CANCEL_SUBJECT = f"{VERSION_PREFIX}.cancel"
#: Request/reply: usage totals from accounting.
USAGE_QUERY_SUBJECT = f"{VERSION_PREFIX}.accounting.usage"

#: Workers announce whole answers here after replying; a cache replica (queue group) learns them.
CACHE_FILL_SUBJECT = f"{VERSION_PREFIX}.cache.fill"
#: Request/reply: purge cached answers (``CachePurge`` -> ``CachePurged``); every replica shares the stores.
CACHE_PURGE_SUBJECT = f"{VERSION_PREFIX}.cache.purge"
CACHE_FILL_QUEUE_GROUP = "sf-cache-fill"


def cache_verdict_subject(worker_id: str) -> str:
    """Where the cache stage sends its ``CacheVerdict`` on a task worker ``worker_id`` holds pending."""
    return f"{VERSION_PREFIX}.cache.verdict.{worker_id}"


CACHE_PURGE_QUEUE_GROUP = "sf-cache-purge"
#: The exact cache's JetStream key-value bucket.
CACHE_EXACT_BUCKET = "SF_CACHE_EXACT"

#: Queue groups: members of one group share the subject's messages.
WORKER_QUEUE_GROUP = "sf-workers"
ACCOUNTING_QUEUE_GROUP = "sf-accounting"


def stage_queue_group(stage: str) -> str:
    return f"sf-stage-{stage}"


@dataclass(frozen=True)
class StreamSpec:
    """A JetStream stream that services create (idempotently) at start-up."""

    name: str
    subjects: tuple[str, ...]
    #: "limits" keeps messages until age/size limits; "workqueue" deletes them once acknowledged.
    retention: str
    #: Publishes carrying the same Nats-Msg-Id within this window are stored once.
    duplicate_window_s: float
    max_age_s: float


USAGE_STREAM = StreamSpec(
    name="SF_USAGE",
    subjects=(USAGE_SUBJECT,),
    retention="limits",
    duplicate_window_s=600.0,
    max_age_s=7 * 24 * 3600.0,
)
BULK_STREAM = StreamSpec(
    name="SF_BULK",
    subjects=(f"{VERSION_PREFIX}.infer.*.{Priority.BULK.value}",),
    retention="workqueue",
    duplicate_window_s=600.0,
    max_age_s=7 * 24 * 3600.0,
)
BULK_RESULTS_STREAM = StreamSpec(
    name="SF_BULK_RESULTS",
    subjects=(f"{VERSION_PREFIX}.bulk.result.>",),
    retention="limits",
    duplicate_window_s=600.0,
    max_age_s=7 * 24 * 3600.0,
)
ALL_STREAMS = (USAGE_STREAM, BULK_STREAM, BULK_RESULTS_STREAM)

#: Durable consumers: one name per role, shared by every replica of that role.
ACCOUNTING_DURABLE = "accounting"


def bulk_durable(tier: str) -> str:
    return f"worker-{tier}-bulk"


#: Every stage a request's itinerary may name, in the order a pipeline visits them. Stages arrive
#: with their services (cache, classifier, retrieval); inference always ends the itinerary.
KNOWN_STAGES: tuple[str, ...] = (CACHE_STAGE, CLASSIFIER_STAGE, INFER_STAGE)


#: Public bulk input: a tenant publishes ``contracts.v1.BulkLine`` messages here, one per request.
PUBLIC_BULK_PREFIX = f"{VERSION_PREFIX}.bulk.in"


def public_bulk_subject(tenant: str, job_id: str) -> str:
    """Where ``tenant`` publishes the lines of its bulk job ``job_id``.

    The tenant token is trusted only because NATS lets each tenant's user publish on
    ``public_bulk_wildcard(its tenant)`` and nothing else (subject permissions, ``infra/nats/``):
    skinflint reads the tenant from the subject a message arrived on, never from the message.
    Both tokens must be valid subject tokens (no ``.``, ``*``, ``>`` or whitespace).
    """
    return f"{PUBLIC_BULK_PREFIX}.{tenant}.{job_id}"


def public_bulk_wildcard(tenant: str) -> str:
    """The publish permission a tenant's NATS user is given: its own bulk jobs, no one else's."""
    return f"{PUBLIC_BULK_PREFIX}.{tenant}.>"


#: Every tenant's bulk input: what the batch service (alone) subscribes to.
PUBLIC_BULK_ALL = f"{PUBLIC_BULK_PREFIX}.>"
#: Public bulk output: ``contracts.v1.BulkOutputLine`` messages, one per finished request.
PUBLIC_BULK_OUTPUT_PREFIX = f"{VERSION_PREFIX}.bulk.out"


def public_bulk_output_subject(tenant: str, job_id: str) -> str:
    """Where the result lines of ``tenant``'s job ``job_id`` are published; NATS lets that tenant's
    user subscribe to ``public_bulk_output_wildcard(its tenant)`` only."""
    return f"{PUBLIC_BULK_OUTPUT_PREFIX}.{tenant}.{job_id}"


def public_bulk_output_wildcard(tenant: str) -> str:
    """The subscribe permission a tenant's NATS user is given for its own results."""
    return f"{PUBLIC_BULK_OUTPUT_PREFIX}.{tenant}.>"


def is_subject_token(token: str) -> bool:
    """Whether ``token`` can stand as one token of a subject (a tenant or job id)."""
    return bool(token) and not any(c in token for c in ".*> \t\r\n")


# -- Batch API storage (services.batch.store; the batch service creates these buckets itself) --
#: Object store of batch files' bytes (inputs tenants upload; outputs and errors batches write).
BATCH_FILES_BUCKET = "SF_FILES"
#: KV of batch files' records (``services.batch.files.StoredFile``), key ``f.<tenant>.<file id>``.
BATCH_FILE_META_BUCKET = "SF_FILE_META"
#: KV of batch jobs (``services.batch.job.BatchJob``), key ``b.<tenant>.<batch id>``.
BATCH_JOBS_BUCKET = "SF_BATCHES"
#: KV of batch items' stored results, create-only, key ``<batch id>.<item index>``.
BATCH_ITEMS_BUCKET = "SF_BATCH_ITEMS"

# -- Batch runtime (services.batch.service) ---------------------------------------------------
#: Ingress asks the batch service to start a job it created (``contracts.v1.BatchStart``).
BATCH_START_SUBJECT = f"{VERSION_PREFIX}.batch.start"
#: A job's items waiting to run: one ``BulkLine`` per message, header ``Sf-Item-Index``.
BATCH_WORK_PREFIX = f"{VERSION_PREFIX}.batch.work"
#: The header of a work message naming its item's index in the job (0-based, file order).
ITEM_INDEX_HEADER = "Sf-Item-Index"


def batch_work_subject(tenant: str, batch_id: str) -> str:
    """Where the batch service queues the items of ``tenant``'s batch ``batch_id``."""
    return f"{BATCH_WORK_PREFIX}.{tenant}.{batch_id}"


def batch_result_subject(tenant: str, batch_id: str) -> str:
    """The reply subject of a batch item's task: its result is stored in ``SF_BULK_RESULTS``."""
    return f"{VERSION_PREFIX}.bulk.result.{tenant}.{batch_id}"


#: Results of batch items: ``sf.v1.bulk.result.<tenant>.<batch id>`` (two tokens).
BATCH_RESULTS_FILTER = f"{VERSION_PREFIX}.bulk.result.*.*"


def public_bulk_end_subject(tenant: str, job_id: str) -> str:
    """Where ``tenant`` publishes ``contracts.v1.BulkEnd`` once every line of job ``job_id`` is
    published: the job then runs. Covered by the same permission as its lines."""
    return f"{PUBLIC_BULK_PREFIX}.{tenant}.{job_id}.end"


#: Every tenant's end-of-job messages: what the batch service's durable consumer filters on.
PUBLIC_BULK_END_ALL = f"{PUBLIC_BULK_PREFIX}.*.*.end"

BATCH_START_STREAM = StreamSpec(
    name="SF_BATCH_START",
    subjects=(BATCH_START_SUBJECT,),
    retention="workqueue",
    duplicate_window_s=3600.0,
    max_age_s=7 * 24 * 3600.0,
)
BATCH_WORK_STREAM = StreamSpec(
    name="SF_BATCH_WORK",
    subjects=(f"{BATCH_WORK_PREFIX}.>",),
    retention="workqueue",
    duplicate_window_s=3600.0,
    max_age_s=8 * 24 * 3600.0,
)
#: Tenants' bulk lines and end messages, kept (limits) so a job's lines are read in order when it ends.
BULK_IN_STREAM = StreamSpec(
    name="SF_BULK_IN",
    subjects=(f"{PUBLIC_BULK_PREFIX}.>",),
    retention="limits",
    duplicate_window_s=3600.0,
    max_age_s=8 * 24 * 3600.0,
)
BATCH_STREAMS = (BATCH_START_STREAM, BATCH_WORK_STREAM, BULK_IN_STREAM)
#: Durable consumers of the batch service (every replica shares each).
BATCH_START_DURABLE = "batch-start"
BATCH_WORK_DURABLE = "batch-work"
BATCH_RESULTS_DURABLE = "batch-results"
BATCH_BUS_END_DURABLE = "batch-bus-end"
