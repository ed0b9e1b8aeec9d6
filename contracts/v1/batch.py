"""Bulk work from outside: one line of a batch in, one line of its result out.

``BulkLine`` is the public message a tenant publishes on its own bulk subject
(``contracts.subjects.public_bulk_subject``): a line of an OpenAI Batch input file, nothing more.
It names no tenant, tier or priority: the tenant is who NATS authenticated as publisher (subject
permissions), and everything else is decided by skinflint as for a chat request.

``BulkOutputLine`` is one line of OpenAI's batch output or error file: what a batch's files hold
and what a bus client reads back. Its shape follows OpenAI's "request output object" (the per-line
object of the batch output and error files): ``response`` set with the endpoint's status code and
body (an answer, or an HTTP error the endpoint returned), or ``response`` null and ``error`` set
for a failure that is not the endpoint's (the batch expired or was cancelled, or the line itself
was unreadable).
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import Field, model_validator

from contracts.v1.chat import WireModel


class BulkLine(WireModel):
    """One request of a bulk job, as a line of an OpenAI Batch input file carries it.

    A batch file's line (``custom_id``, ``method``, ``url``, ``body``) parses as it is: ``method``
    and ``url`` are ignored here (bulk work is always a chat completion). ``body`` stays a plain
    object on the wire so that a body skinflint refuses fails that line alone, answered on the
    job's error output with the same 400 ``POST /v1/chat/completions`` gives, instead of making
    the whole message unreadable.
    """

    custom_id: str = Field(
        min_length=1, max_length=512,
        description="The sender's id for this request, unique within its job; every result line carries it.",
    )
    body: dict[str, Any] = Field(
        description="A chat completion request, exactly as POST /v1/chat/completions takes it (schema: "
                    "contracts.v1.ChatRequest, with ingress's field policy); `stream` must be absent or false.",
    )


class BulkResponse(WireModel):
    """What the endpoint answered: a chat completion (status 200) or an OpenAI error body (4xx/5xx)."""

    status_code: int = Field(ge=100, le=599, description="The HTTP status the endpoint answered with.")
    request_id: str = Field(description="skinflint's id of the request (as in the x-request-id header).")
    body: dict[str, Any] = Field(
        description="The endpoint's JSON body: a `chat.completion` object, or `{\"error\": {...}}`.",
    )


class BulkError(WireModel):
    """Why a request has no answer from the endpoint at all."""

    code: str = Field(description="Machine-readable: `batch_expired`, `batch_cancelled`, or why the line "
                                  "could not be read (`invalid_json_line`, `missing_required_parameter`, ...).")
    message: str = Field(description="What went wrong (with the input line number) and what to do.")


class BulkOutputLine(WireModel):
    """One line of a batch's output or error file (OpenAI's request output object).

    Invariant: exactly one of ``response`` and ``error`` is set. A line with a 200 response goes to
    the output file; every other line goes to the error file.
    """

    id: str = Field(description="`batch_req_...`: the same for the same item of the same job, however often "
                                "its result is written.")
    custom_id: str | None = Field(description="The input line's custom_id; null when the line had none readable.")
    response: BulkResponse | None = Field(default=None, description="The endpoint's answer, if it gave one.")
    error: BulkError | None = Field(default=None, description="Why there is no answer, if it gave none.")

    @model_validator(mode="after")
    def _response_or_error(self) -> BulkOutputLine:
        if (self.response is None) == (self.error is None):
            raise ValueError("exactly one of response and error must be set")
        return self

    @property
    def succeeded(self) -> bool:
        """Whether the line belongs in the output file (else the error file)."""
        return self.response is not None and self.response.status_code == 200


class BatchStart(WireModel):
    """Ingress to the batch service: run ``tenant``'s batch ``batch_id`` (created ``validating``)."""

    tenant: str = Field(min_length=1, description="The tenant whose batch it is.")
    batch_id: str = Field(min_length=1, description="The batch to start (its record is in the job store).")


class BulkEnd(WireModel):
    """The last message of a bus job (``contracts.subjects.public_bulk_end_subject``): every line is
    published; the job runs its lines in the order the stream stored them."""

    lines: int = Field(ge=1, description="How many lines the job has: the job fails if the stream holds another "
                                         "number of them for it.")
    completion_window: str = Field(default="24h", description="As for POST /v1/batches: '24h' (1h..168h).")
    metadata: dict[str, str] = Field(default_factory=dict, description="As for POST /v1/batches (16 pairs at most).")


def bus_batch_id(tenant: str, job: str) -> str:
    """The batch id of ``tenant``'s bus job ``job`` (its subject token): what ``GET /v1/batches/{id}``
    and the output file name; distinct per tenant, so two tenants' jobs never share item ids."""
    digest = hashlib.sha256(f"{tenant}\x00{job}".encode()).hexdigest()[:24]
    return f"batch_bus_{digest}"
