"""The public bulk message and subjects: a batch file's line as it is, the tenant only in the subject."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts import subjects
from contracts.v1 import BulkLine
from services.batch.lines import InputLimits, LineChecker, LineError, LineItem, parse_file

pytestmark = pytest.mark.unit
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "v1"


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more at the end."""
    pat, sub = pattern.split("."), subject.split(".")
    for i, token in enumerate(pat):
        if token == ">":
            return len(sub) > i
        if i >= len(sub) or (token != "*" and token != sub[i]):
            return False
    return len(pat) == len(sub)


def test_a_batch_file_line_is_a_bulk_line_as_it_is() -> None:
    raw = (EXAMPLES / "bulk_line.json").read_text()
    msg = BulkLine.model_validate_json(raw)
    assert msg.custom_id == "question-1" and msg.body["model"] == "smollm2-135m"
    # ...and the same bytes, as one line of a file, are a valid batch request.
    [item] = parse_file([json.dumps(json.loads(raw)).encode()], InputLimits())
    assert isinstance(item, LineItem) and item.request.max_tokens == 32


def test_a_bad_body_still_parses_as_a_message_so_only_that_line_fails() -> None:
    msg = BulkLine.model_validate({"custom_id": "q", "body": {"model": "m", "messages": []}})
    assert msg.body["messages"] == []


def test_the_bulk_line_carries_no_tenant_tier_or_priority() -> None:
    assert set(BulkLine.model_fields) == {"custom_id", "body"}
    msg = BulkLine.model_validate({"custom_id": "q", "body": {}, "tenant": "victim", "tier": "large"})
    assert "tenant" not in msg.model_dump()


def test_each_tenant_publishes_under_its_own_prefix_only() -> None:
    mine = subjects.public_bulk_subject("acme", "job1")
    assert matches(subjects.public_bulk_wildcard("acme"), mine)
    assert not matches(subjects.public_bulk_wildcard("other"), mine)
    assert not matches(subjects.public_bulk_wildcard("acm"), mine)
    assert matches(subjects.PUBLIC_BULK_ALL, mine)
    out = subjects.public_bulk_output_subject("acme", "job1")
    assert matches(subjects.public_bulk_output_wildcard("acme"), out)
    assert not matches(subjects.public_bulk_output_wildcard("other"), out)
    assert not matches(subjects.public_bulk_wildcard("acme"), out)


def test_public_bulk_subjects_are_in_no_existing_stream() -> None:
    for subject in (subjects.public_bulk_subject("acme", "j"), subjects.public_bulk_output_subject("acme", "j")):
        for stream in subjects.ALL_STREAMS:
            assert not any(matches(p, subject) for p in stream.subjects), (subject, stream.name)


@pytest.mark.parametrize(("token", "ok"), [("acme", True), ("batch_12ab", True), ("a.b", False), ("*", False),
                                           (">", False), ("a b", False), ("", False)])
def test_subject_tokens(token: str, ok: bool) -> None:
    assert subjects.is_subject_token(token) is ok


def test_bus_messages_get_the_checks_of_a_files_lines() -> None:
    checker = LineChecker(InputLimits(), unit="message")
    good = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    results = [checker.check_message(i, BulkLine(custom_id=cid, body=b)) for i, (cid, b) in enumerate([
        ("a", good), ("a", good), ("b", {**good, "stream": True}), ("c", {**good, "logit_bias": {}}),
        ("d", {**good, "model": "other"}), ("e", good)])]
    assert isinstance(results[0], LineItem) and isinstance(results[5], LineItem)
    errors = [r for r in results if isinstance(r, LineError)]
    assert [(e.index, e.code, e.status) for e in errors] == [
        (1, "duplicate_custom_id", None), (2, "unsupported_value", None), (3, "unsupported_parameter", 400),
        (4, "model_mismatch", None)]
    assert errors[0].message.startswith("message 2: ")
