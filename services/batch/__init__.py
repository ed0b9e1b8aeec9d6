"""Batch jobs: OpenAI Batch input files, output and error lines, and the job's state machine.

What is here. Plain logic, unit-tested: ``lines`` (an input file, line by line: a bad line fails
only itself), ``output`` (OpenAI's output and error lines, an answer's body exactly a chat
answer's), ``job`` (the Batch object, its statuses and timestamps, counts that a redelivered
result cannot change), ``files`` (the File object). On JetStream, tested against a real
nats-server: ``store`` (files in an object store, their records in key-value) and ``job_store``
(jobs and per-item results in key-value buckets), every read by tenant and id.

The design the service follows (issue 14), so that both entry points share one job model:

- **Ingress** serves ``/v1/files`` and ``/v1/batches`` for the caller's tenant only; an upload is
  streamed into the file store with its size checked as it arrives; ``POST /v1/batches`` checks
  the file's whole-file limits and creates the job (``validating``), then hands it to the batch
  service.
- **The public bus subject** ``sf.v1.bulk.in.<tenant>.<job>`` (``contracts.subjects``) carries
  ``BulkLine`` messages. NATS's own users and subject permissions (``infra/nats/``) let each
  tenant's user publish only under its own token, so the tenant is read from the subject, never
  from the message.
- **The batch service** (a queue group; state only in the stores) turns each valid line into a
  bulk ``TaskEnvelope`` with the full itinerary (cache, classifier, infer: the same levers as
  chat), publishes it to the tier's bulk stream with ``Nats-Msg-Id`` = the item's request id
  (stored once however often it is retried), and consumes ``SF_BULK_RESULTS`` durably: a result is
  recorded with ``JobStore.record_item`` (create-only, so a redelivery adds nothing) before its
  message is acknowledged; the job's counts and status move with ``JobStore.update``'s optimistic
  concurrency. When every item has an outcome it writes the output and error files from the
  recorded items and completes the job; a crash anywhere resumes from the stores.
- **Workers** already pull bulk tasks only into slots chat leaves free and pass the low priority
  to vLLM; accounting charges each item once (its request id) at the tier's batch discount.
- **Cancel** marks the job ``cancelling``; the batch service stops publishing, and items still
  queued are answered ``batch_cancelled`` without running (a worker checks the job before it
  starts an item); finished items are kept.
"""
