"""Reading a batch input file: every bad line fails only itself; only file-wide limits refuse the file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from services.batch.lines import (
    FileRejected,
    FileTooLarge,
    InputLimits,
    LineError,
    LineItem,
    LineResult,
    parse_file,
    scan,
    split_lines,
)

pytestmark = pytest.mark.unit
LIMITS = InputLimits()


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def line(custom_id: Any = "a", **fields: Any) -> bytes:
    data: dict[str, Any] = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                            "body": body()}
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


def jsonl(*lines: bytes) -> bytes:
    return b"\n".join(lines) + b"\n"


def parse(raw: bytes, limits: InputLimits = LIMITS, **kw: Any) -> list[LineResult]:
    return list(parse_file([raw], limits, **kw))


def only_error(raw: bytes) -> LineError:
    results = parse(jsonl(line("ok-1"), raw, line("ok-2")))
    assert [type(r) for r in results] == [LineItem, LineError, LineItem], results
    err = results[1]
    assert isinstance(err, LineError) and err.line == 2 and err.index == 1
    return err


def chunked(raw: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(raw), size):
        yield raw[i:i + size]


def test_a_valid_line_is_an_item_with_its_validated_request() -> None:
    [item] = parse(jsonl(line("q1", body=body(max_tokens=5, temperature=0))))
    assert isinstance(item, LineItem)
    assert (item.index, item.line, item.custom_id) == (0, 1, "q1")
    assert item.request.model == "m" and item.request.max_tokens == 5


@pytest.mark.parametrize(("raw", "code", "param"), [
    (b"{not json", "invalid_json_line", None),
    (b"[1, 2]", "invalid_json_line", None),
    (b"\xff\xfe{}", "invalid_json_line", None),
    (line(...), "missing_required_parameter", "custom_id"),
    (line(None), "missing_required_parameter", "custom_id"),
    (line(7), "invalid_request", "custom_id"),
    (line(""), "invalid_request", "custom_id"),
    (line("x" * 513), "invalid_request", "custom_id"),
    (line("b", method=...), "missing_required_parameter", "method"),
    (line("b", method="GET"), "invalid_request", "method"),
    (line("b", url=...), "missing_required_parameter", "url"),
    (line("b", url="/v1/embeddings"), "url_mismatch", "url"),
    (line("b", url="/v2/chat"), "invalid_url", "url"),
    (line("b", body=...), "missing_required_parameter", "body"),
    (line("b", body="hello"), "invalid_request", "body"),
    (line("b", body=body(stream=True)), "unsupported_value", "body.stream"),
    (line("b", body=body(model="other")), "model_mismatch", "body.model"),
])
def test_a_malformed_line_fails_only_itself_with_a_code_and_the_field(raw: bytes, code: str,
                                                                      param: str | None) -> None:
    err = only_error(raw)
    assert (err.code, err.param, err.status) == (code, param, None)
    assert err.message.startswith("line 2: ")
    if param is not None:
        assert param.split(".")[-1] in err.message


@pytest.mark.parametrize(("fields", "code", "param"), [
    ({"messages": []}, "invalid_request_error", "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "invalid_request_error", "messages.0.role"),
    ({"logit_bias": {"1": 2}}, "unsupported_parameter", "logit_bias"),
    ({"frobnicate": 1}, "unknown_parameter", "frobnicate"),
    ({"n": 2}, "invalid_request_error", "n"),
])
def test_a_body_the_chat_endpoint_refuses_is_refused_as_it_would(fields: dict[str, Any], code: str,
                                                                 param: str) -> None:
    err = only_error(line("b", body=body(**fields)))
    assert (err.status, err.code, err.param, err.custom_id) == (400, code, param, "b")


def test_a_body_without_a_model_is_refused_by_the_endpoints_rules() -> None:
    raw = json.dumps({"custom_id": "b", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"messages": [{"role": "user", "content": "x"}]}}).encode()
    err = only_error(raw)
    assert (err.status, err.param) == (400, "model")


def test_stream_false_is_accepted() -> None:
    [item] = parse(jsonl(line("s", body=body(stream=False))))
    assert isinstance(item, LineItem) and not item.request.stream


def test_a_duplicate_custom_id_fails_the_later_line_only() -> None:
    results = parse(jsonl(line("same"), line("other"), line("same")))
    assert [type(r) for r in results] == [LineItem, LineItem, LineError]
    err = results[2]
    assert isinstance(err, LineError)
    assert (err.code, err.custom_id, err.line) == ("duplicate_custom_id", "same", 3)


def test_a_custom_id_is_taken_even_by_a_line_whose_body_fails() -> None:
    results = parse(jsonl(line("x", body=body(messages=[])), line("x")))
    assert [r.code for r in results if isinstance(r, LineError)] == ["invalid_request_error", "duplicate_custom_id"]


def test_the_first_valid_line_sets_the_model_unless_it_is_given() -> None:
    raw = jsonl(line("a", body=body(model="m1")), line("b", body=body(model="m2")))
    assert [type(r) for r in parse(raw)] == [LineItem, LineError]
    assert [type(r) for r in parse(raw, model="m2")] == [LineError, LineItem]


def test_blank_lines_are_skipped_and_numbers_stay_physical() -> None:
    raw = b"\n" + line("a") + b"\r\n   \n" + line("b")  # no newline at the end, CRLF in the middle
    results = parse(raw)
    assert [(r.index, r.line) for r in results] == [(0, 2), (1, 4)]
    assert all(isinstance(r, LineItem) for r in results)


def test_chunk_boundaries_do_not_matter() -> None:
    raw = jsonl(*(line(f"q{i}") for i in range(20)))
    whole = [(r.index, r.line, r.custom_id) for r in parse(raw)]
    for size in (1, 7, 64, 1000):
        assert [(r.index, r.line, r.custom_id) for r in parse_file(chunked(raw, size), LIMITS)] == whole


def test_split_lines_stops_reading_past_the_size_limit() -> None:
    read: list[int] = []

    def chunks() -> Iterator[bytes]:
        for i in range(100):
            read.append(i)
            yield b"x" * 10 + b"\n"

    with pytest.raises(FileTooLarge) as info:
        list(split_lines(chunks(), max_bytes=50))
    assert info.value.status == 413 and "50 bytes" in info.value.message
    assert len(read) == 5  # the sixth chunk crossed the limit; nothing after it was read


def test_scan_counts_requests_and_bytes() -> None:
    raw = jsonl(line("a"), b"", line("b"), b"{broken")
    summary = scan(chunked(raw, 5), LIMITS)
    assert (summary.bytes, summary.requests) == (len(raw), 3)


@pytest.mark.parametrize("raw", [b"", b"\n\n  \r\n"])
def test_an_empty_file_is_refused(raw: bytes) -> None:
    with pytest.raises(FileRejected) as info:
        scan([raw], LIMITS)
    assert (info.value.code, info.value.status) == ("empty_file", 400)


def test_too_many_requests_refuse_the_file_in_scan_and_parse() -> None:
    limits = InputLimits(max_requests=3)
    raw = jsonl(*(line(f"q{i}") for i in range(4)))
    assert scan([jsonl(*(line(f"q{i}") for i in range(3)))], limits).requests == 3
    with pytest.raises(FileRejected) as info:
        scan([raw], limits)
    assert info.value.code == "too_many_tasks" and "3 requests" in info.value.message
    with pytest.raises(FileRejected):
        list(parse_file([raw], limits))


def test_a_file_over_the_size_limit_is_refused_by_scan() -> None:
    raw = jsonl(*(line(f"q{i}") for i in range(10)))
    with pytest.raises(FileTooLarge):
        scan(chunked(raw, 100), InputLimits(max_bytes=len(raw) - 1))
    assert scan(chunked(raw, 100), InputLimits(max_bytes=len(raw))).requests == 10


def test_the_custom_id_length_limit_is_a_parameter() -> None:
    [err] = parse(jsonl(line("abcdef")), InputLimits(max_custom_id_chars=5))
    assert isinstance(err, LineError) and err.code == "invalid_request" and "5 characters" in err.message


def test_a_line_error_is_an_openai_batch_error_entry() -> None:
    from openai.types import BatchError

    err = only_error(b"{")
    entry = BatchError.model_validate(err.as_batch_error())
    assert (entry.code, entry.line) == ("invalid_json_line", 2)


def test_parsing_is_lazy() -> None:
    """A generator: the first result comes before the rest of the file is read."""
    def chunks() -> Iterator[bytes]:
        yield jsonl(line("a"))
        raise AssertionError("read past the first line")

    results = parse_file(chunks(), LIMITS)
    first = next(results)
    assert isinstance(first, LineItem) and first.custom_id == "a"
