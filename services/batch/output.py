"""A batch's output and error files: one ``BulkOutputLine`` per request, in OpenAI's format.

Where a line comes from decides its shape (OpenAI's request output object):

- an answer (``Final``): ``response`` 200 with the very ``chat.completion`` object
  ``POST /v1/chat/completions`` returns for it (``services.ingress.openai_format.completion``);
- an error the endpoint returned (``ErrorReply``, or a body ``lines`` refused as the endpoint
  would): ``response`` with that status and OpenAI's ``{"error": {...}}`` body, ``error`` null;
- no call at all (the line was unreadable, or the batch expired or was cancelled first):
  ``response`` null and ``error`` ``{code, message}``.

Every function is deterministic in its arguments: writing an item's result again (a redelivery)
gives the same line, byte for byte, with the same ``batch_req_`` id.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

from contracts.v1 import ErrorReply, Final
from contracts.v1.batch import BulkError, BulkOutputLine, BulkResponse
from services.batch.lines import LineError
from services.ingress.openai_format import completion, error_body
from services.shared.errors import SkinflintError


class Unrun(StrEnum):
    """Why a request of a batch was never run (OpenAI's codes)."""

    EXPIRED = "batch_expired"
    CANCELLED = "batch_cancelled"


_UNRUN_MESSAGES = {
    Unrun.EXPIRED: "This request could not be executed before the completion window expired.",
    Unrun.CANCELLED: "This batch was cancelled before this request was executed.",
}


def item_request_id(job_id: str, index: int) -> str:
    """The request id of item ``index`` of job ``job_id``: its bulk task's ``request_id`` (the key that
    makes its charge and its stored result happen once) and the ``request_id`` its line reports."""
    return f"{job_id}-{index}"


def batch_request_id(job_id: str, index: int) -> str:
    """The ``batch_req_...`` id of item ``index``'s output line: the same for every write of it."""
    digest = hashlib.sha256(f"{job_id}\x00{index}".encode()).hexdigest()[:32]
    return f"batch_req_{digest}"


def answered(job_id: str, index: int, custom_id: str, final: Final, created: int) -> BulkOutputLine:
    """The output line of an answer. ``created``: when the answer was stored (Unix seconds), so that
    rewriting the line later gives the same bytes."""
    return BulkOutputLine(
        id=batch_request_id(job_id, index), custom_id=custom_id,
        response=BulkResponse(status_code=200, request_id=final.request_id,
                              body=completion(final.request_id, created, final)),
    )


def refused(job_id: str, index: int, custom_id: str | None, reply: ErrorReply) -> BulkOutputLine:
    """The error line of a request the endpoint answered with an error (status, OpenAI error body)."""
    return BulkOutputLine(
        id=batch_request_id(job_id, index), custom_id=custom_id,
        response=BulkResponse(status_code=reply.status, request_id=reply.request_id,
                              body=error_body(SkinflintError.from_reply(reply))),
    )


def from_reply(job_id: str, index: int, custom_id: str, reply: Final | ErrorReply, created: int) -> BulkOutputLine:
    """The line of an item's stored result, whichever it is."""
    if isinstance(reply, Final):
        return answered(job_id, index, custom_id, reply, created)
    return refused(job_id, index, custom_id, reply)


def line_failed(job_id: str, err: LineError) -> BulkOutputLine:
    """The error line of an input line ``lines`` refused: as the endpoint's 4xx when the body was at
    fault (``err.status``), else as a line that was never a call."""
    if err.status is not None:
        reply = ErrorReply(request_id=item_request_id(job_id, err.index), status=err.status, code=err.code,
                           message=err.message, param=err.param)
        return refused(job_id, err.index, err.custom_id, reply)
    return BulkOutputLine(id=batch_request_id(job_id, err.index), custom_id=err.custom_id,
                          error=BulkError(code=err.code, message=err.message))


def unrun(job_id: str, index: int, custom_id: str, why: Unrun) -> BulkOutputLine:
    """The error line of a request left pending when its batch expired or was cancelled."""
    return BulkOutputLine(id=batch_request_id(job_id, index), custom_id=custom_id,
                          error=BulkError(code=why.value, message=_UNRUN_MESSAGES[why]))


def jsonl(line: BulkOutputLine) -> bytes:
    """One line of the file: compact JSON, keys in OpenAI's order, a newline at the end."""
    return line.model_dump_json().encode() + b"\n"
