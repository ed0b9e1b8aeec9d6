"""Wire contracts: every published example still parses, and validation names the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from contracts import subjects
from contracts.v1 import (
    REPLY_ADAPTER,
    Accepted,
    AnswerAnnounced,
    BulkLine,
    BulkOutputLine,
    CachePurge,
    CachePurged,
    CacheVerdict,
    CancelRequest,
    ChatRequest,
    Chunk,
    ErrorReply,
    Final,
    HopAck,
    TaskEnvelope,
    UsageEvent,
    UsageQuery,
    UsageReport,
    WorkerHeartbeat,
)

pytestmark = pytest.mark.unit
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "v1"
MODELS: dict[str, type[BaseModel]] = {
    "chat_request": ChatRequest, "task_envelope": TaskEnvelope, "reply_accepted": Accepted,
    "reply_chunk": Chunk, "reply_final": Final, "reply_error": ErrorReply, "usage_event": UsageEvent,
    "worker_heartbeat": WorkerHeartbeat, "cancel_request": CancelRequest, "hop_ack": HopAck,
    "usage_query": UsageQuery, "usage_report": UsageReport, "answer_announced": AnswerAnnounced,
    "cache_purge": CachePurge, "cache_purged": CachePurged, "cache_verdict": CacheVerdict,
    "bulk_line": BulkLine, "bulk_output_line": BulkOutputLine,
}


def test_every_example_has_a_model_and_every_model_an_example() -> None:
    assert {p.stem for p in EXAMPLES.glob("*.json")} == set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_example_parses_and_round_trips(name: str) -> None:
    raw = json.loads((EXAMPLES / f"{name}.json").read_text())
    model = MODELS[name].model_validate(raw)
    assert MODELS[name].model_validate_json(model.model_dump_json()) == model


@pytest.mark.parametrize("name", ["reply_accepted", "reply_chunk", "reply_final", "reply_error"])
def test_replies_parse_through_the_discriminated_union(name: str) -> None:
    raw = (EXAMPLES / f"{name}.json").read_text()
    assert isinstance(REPLY_ADAPTER.validate_json(raw), MODELS[name])


def test_wire_models_ignore_unknown_fields_from_newer_producers() -> None:
    raw = json.loads((EXAMPLES / "usage_event.json").read_text())
    raw["added_in_a_later_minor_version"] = {"anything": 1}
    assert UsageEvent.model_validate(raw).request_id == raw["request_id"]


def _chat(**fields: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"n": 2}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
         "messages.0.content"),
    ],
)
def test_chat_request_rejects_with_the_field_named(fields: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ChatRequest.model_validate(_chat(**fields))
    locs = {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}
    assert field in locs


def test_text_parts_are_joined_and_limits_resolved() -> None:
    req = ChatRequest.model_validate(_chat(
        messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        max_completion_tokens=7, stop="END",
    ))
    assert req.messages[0].content == "ab"
    assert req.token_limit == 7
    assert req.stop_list == ["END"]


def test_subjects_are_versioned_and_distinct_per_priority() -> None:
    interactive = subjects.infer_subject("small", subjects.Priority.INTERACTIVE)
    bulk = subjects.infer_subject("small", subjects.Priority.BULK)
    assert interactive == "sf.v1.infer.small.interactive"
    assert bulk == "sf.v1.infer.small.bulk"
    # Only bulk work is kept in the work-queue stream.
    assert subjects.BULK_STREAM.subjects == ("sf.v1.infer.*.bulk",)
