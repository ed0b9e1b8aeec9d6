"""Output and error file lines: OpenAI's request output object, the chat endpoint's own bodies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai.types.chat import ChatCompletion

from contracts.v1 import BulkOutputLine, ErrorReply, Final
from services.batch.lines import InputLimits, LineError, parse_file
from services.batch.output import (
    Unrun,
    answered,
    batch_request_id,
    from_reply,
    item_request_id,
    jsonl,
    line_failed,
    refused,
    unrun,
)
from services.ingress.openai_format import completion, error_body
from services.shared.errors import BadRequest

pytestmark = pytest.mark.unit
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "v1"
JOB = "batch_0123"


def final(index: int = 0) -> Final:
    raw = json.loads((EXAMPLES / "reply_final.json").read_text())
    raw["request_id"] = item_request_id(JOB, index)
    return Final.model_validate(raw)


def error_reply(index: int = 1) -> ErrorReply:
    return ErrorReply(request_id=item_request_id(JOB, index), status=404, code="model_not_found",
                      message="the model 'nope' does not exist; available: m", param="model")


def as_file_line(line: BulkOutputLine) -> dict[str, object]:
    raw = jsonl(line)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    data = json.loads(raw)
    assert list(data) == ["id", "custom_id", "response", "error"]  # OpenAI's keys, in its order
    return data  # type: ignore[no-any-return]


def test_an_answer_is_a_200_with_the_very_completion_the_chat_endpoint_returns() -> None:
    reply = final(3)
    data = as_file_line(answered(JOB, 3, "q3", reply, created=1_764_000_000))
    assert data["id"] == batch_request_id(JOB, 3) and str(data["id"]).startswith("batch_req_")
    assert data["custom_id"] == "q3" and data["error"] is None
    response = data["response"]
    assert isinstance(response, dict)
    assert response["status_code"] == 200 and response["request_id"] == reply.request_id
    assert response["body"] == completion(reply.request_id, 1_764_000_000, reply)
    assert ChatCompletion.model_validate(response["body"]).choices[0].message.content == "Paris."


def test_an_endpoint_error_keeps_its_status_and_openai_error_body() -> None:
    reply = error_reply()
    data = as_file_line(refused(JOB, 1, "q1", reply))
    response = data["response"]
    assert isinstance(response, dict) and data["error"] is None
    assert response["status_code"] == 404
    assert response["body"] == error_body(BadRequest(reply.message, param="model", status=404,
                                                     code="model_not_found"))
    assert response["body"]["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_from_reply_picks_the_shape_by_the_reply() -> None:
    ok = from_reply(JOB, 0, "q0", final(0), created=1)
    bad = from_reply(JOB, 1, "q1", error_reply(1), created=1)
    assert ok.succeeded and not bad.succeeded
    assert bad.response is not None and bad.response.status_code == 404


def test_writing_a_result_again_gives_the_same_bytes() -> None:
    first = jsonl(answered(JOB, 0, "q0", final(0), created=5))
    assert jsonl(answered(JOB, 0, "q0", final(0), created=5)) == first
    assert batch_request_id(JOB, 0) != batch_request_id(JOB, 1) != batch_request_id("batch_other", 1)


def _line_errors(raw: bytes) -> list[LineError]:
    return [r for r in parse_file([raw], InputLimits()) if isinstance(r, LineError)]


def test_an_unreadable_line_has_no_response_and_an_error_code() -> None:
    [err] = _line_errors(b'{"custom_id": "q", "method": "POST"}\n')
    data = as_file_line(line_failed(JOB, err))
    assert data["response"] is None and data["custom_id"] == "q"
    assert data["error"] == {"code": "missing_required_parameter", "message": err.message}


def test_a_line_without_a_readable_custom_id_has_a_null_one() -> None:
    [err] = _line_errors(b"nonsense\n")
    data = as_file_line(line_failed(JOB, err))
    assert data["custom_id"] is None and data["error"]["code"] == "invalid_json_line"  # type: ignore[index]


def test_a_refused_body_is_written_as_the_chat_endpoints_400() -> None:
    raw = json.dumps({"custom_id": "q", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "m", "messages": [], "max_tokens": 1}}).encode()
    [err] = _line_errors(raw)
    data = as_file_line(line_failed(JOB, err))
    assert data["error"] is None
    response = data["response"]
    assert isinstance(response, dict)
    assert response["status_code"] == 400 and response["request_id"] == item_request_id(JOB, 0)
    error = response["body"]["error"]
    assert error["param"] == "messages" and error["type"] == "invalid_request_error"
    assert error["message"] == err.message


@pytest.mark.parametrize(("why", "code"), [(Unrun.EXPIRED, "batch_expired"), (Unrun.CANCELLED, "batch_cancelled")])
def test_a_request_never_run_says_why_with_openais_code(why: Unrun, code: str) -> None:
    data = as_file_line(unrun(JOB, 4, "q4", why))
    assert data["response"] is None and data["error"]["code"] == code  # type: ignore[index]
    assert data["id"] == batch_request_id(JOB, 4)


def test_a_line_has_exactly_one_of_response_and_error() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        BulkOutputLine(id="batch_req_x", custom_id="q")
    both = json.loads(jsonl(unrun(JOB, 0, "q", Unrun.EXPIRED)))
    both["response"] = {"status_code": 200, "request_id": "r", "body": {}}
    with pytest.raises(ValueError, match="exactly one"):
        BulkOutputLine.model_validate(both)
