"""The cascade's cheap check on a weak answer, and which tasks may cascade at all."""

from __future__ import annotations

import pytest

from contracts.subjects import Priority
from contracts.v1 import ChatRequest, Route, RouteDecision, TaskEnvelope
from services.shared.tiers import CascadeConfig
from services.worker.cascade import failed_check, may_cascade

pytestmark = pytest.mark.unit
ON = CascadeConfig(enabled=True, min_chars=2)


def request(**fields: object) -> ChatRequest:
    return ChatRequest.model_validate({"model": "auto", "messages": [{"role": "user", "content": "hi"}], **fields})


@pytest.mark.parametrize(("text", "finish", "fields", "why"), [
    ("Paris is the capital of France.", "stop", {}, None),
    ("", "stop", {}, "empty"),
    (" \n", "stop", {}, "empty"),
    ("Paris is the capital", "length", {}, "cut_short"),
    ("Paris is the capital", "length", {"max_tokens": 4}, None),  # the client asked for the limit
    ("the cat sat on " * 12, "stop", {}, "repetitive"),
    ("one two three four five six seven eight nine ten eleven twelve " * 2, "stop", {}, None),
])
def test_the_check(text: str, finish: str, fields: dict[str, object], why: str | None) -> None:
    assert failed_check(text, finish, request(**fields), ON) == why


def test_cut_short_can_be_switched_off() -> None:
    config = CascadeConfig(enabled=True, escalate_on_length=False)
    assert failed_check("Paris is the capital", "length", request(), config) is None


def envelope(decision: RouteDecision | None, **fields: object) -> TaskEnvelope:
    return TaskEnvelope(request_id="r", tenant="t", request=request(**fields), reply_subject="x", itinerary=["infer"],
                        received_at=0.0, route=Route(model="auto", tier="small", routed=True, decision=decision))


def test_only_a_first_interactive_unstreamed_weak_pick_cascades() -> None:
    weak = RouteDecision(tier="small", policy="learned", cascade=True)
    assert may_cascade(envelope(weak))
    assert not may_cascade(envelope(weak, stream=True))
    assert not may_cascade(envelope(weak).model_copy(update={"priority": Priority.BULK}))
    assert not may_cascade(envelope(RouteDecision(tier="small", policy="learned")))
    assert not may_cascade(envelope(None))
    again = envelope(weak)
    again.route.escalated_from = "small"
    assert not may_cascade(again)
