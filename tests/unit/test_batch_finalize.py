"""A job's output and error files from its input and stored results; bus messages as file lines."""

from __future__ import annotations

import json

import pytest

from contracts.v1 import ErrorReply, Final, TokenUsage
from services.batch.finalize import build, item_record, read_record
from services.batch.intake import as_file_line
from services.batch.lines import InputLimits, LineError, parse_file
from services.batch.output import Unrun

JOB = "batch_abc"


def line(custom_id: str, content: str = "hi") -> bytes:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "m", "messages": [{"role": "user", "content": content}]}}).encode()


def final(index: int, text: str = "ok") -> Final:
    return Final(request_id=f"{JOB}-{index}", text=text, finish_reason="stop", model="m", tier="small",
                 served_by="w", usage=TokenUsage(prompt_tokens=3, completion_tokens=2))


def items(*lines: bytes) -> list:  # type: ignore[type-arg]
    return list(parse_file([b"\n".join(lines)], InputLimits()))


def test_answers_go_to_the_output_and_everything_else_to_the_errors_in_input_order() -> None:
    parsed = items(line("a"), b"not json", line("c"), line("d"), line("e"))
    recorded = {0: item_record(final(0, "first"), 100),
                2: item_record(ErrorReply(request_id=f"{JOB}-2", status=400, code="invalid_request",
                                          message="bad", param="messages"), 101),
                3: item_record(final(3), 102)}
    files = build(JOB, parsed, recorded, Unrun.CANCELLED)
    out = [json.loads(x) for x in files.output.splitlines()]
    err = [json.loads(x) for x in files.errors.splitlines()]
    assert [o["custom_id"] for o in out] == ["a", "d"]
    assert out[0]["response"]["body"]["choices"][0]["message"]["content"] == "first"
    assert out[0]["response"]["body"]["created"] == 100
    assert [(e["custom_id"], (e["error"] or {}).get("code"), (e["response"] or {}).get("status_code"))
            for e in err] == [(None, "invalid_json_line", None), ("c", None, 400), ("e", "batch_cancelled", None)]
    assert (files.answered, files.failed) == (2, 3)


def test_building_again_gives_the_same_bytes() -> None:
    parsed = items(line("a"), line("b"))
    recorded = {0: item_record(final(0), 100)}
    assert build(JOB, parsed, recorded, Unrun.EXPIRED) == build(JOB, parsed, recorded, Unrun.EXPIRED)
    assert b"batch_expired" in build(JOB, parsed, recorded, Unrun.EXPIRED).errors


def test_a_record_reads_back_and_a_broken_one_is_refused() -> None:
    reply, created = read_record(item_record(final(4), 7))
    assert isinstance(reply, Final) and reply.request_id == f"{JOB}-4" and created == 7
    with pytest.raises(ValueError):
        read_record(b'{"created": 1}')
    with pytest.raises(ValueError):
        read_record(b"nonsense")


@pytest.mark.parametrize(("message", "code"), [
    (b'{"custom_id": "x", "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}', None),
    (b"not json\nat all", "invalid_json_line"),
    (b"[1, 2]", "invalid_json_line"),
    (b'{"body": {"model": "m", "messages": []}}', "missing_required_parameter"),
    (b'{"custom_id": "y"}', "missing_required_parameter"),
])
def test_a_bus_message_becomes_one_file_line_that_fails_as_the_message_would(message: bytes,
                                                                               code: str | None) -> None:
    converted = as_file_line(message)
    assert b"\n" not in converted
    [result] = items(converted)
    if code is None:
        assert not isinstance(result, LineError) and result.custom_id == "x"
    else:
        assert isinstance(result, LineError) and result.code == code
