"""Which answers the cache may learn: whole, successful, reproducible ones only (issue 12, item 4)."""

from __future__ import annotations

from typing import Any, Literal

import pytest

from contracts.v1 import ChatRequest, ErrorReply, Final, TokenUsage
from services.cache.fill import Cacheable, FillReason, is_sampled, may_store

pytestmark = pytest.mark.unit


def req(**fields: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Capital of France?"}], **fields})


def final(finish_reason: Literal["stop", "length", "abort"] = "stop") -> Final:
    return Final(request_id="r1", text="Paris.", finish_reason=finish_reason,
                 usage=TokenUsage(prompt_tokens=10, completion_tokens=3), model="smollm2-135m",
                 tier="small", served_by="w1")


ERROR = ErrorReply(request_id="r1", status=500, code="engine_error", message="engine failed")
GREEDY = req(temperature=0)


def test_a_whole_greedy_answer_is_stored() -> None:
    assert may_store(GREEDY, final()) == Cacheable(ok=True, reason=FillReason.OK)


def test_an_error_is_never_stored() -> None:
    assert may_store(GREEDY, ERROR) == Cacheable(ok=False, reason=FillReason.ERROR)


def test_a_stream_without_its_final_answer_is_partial() -> None:
    assert may_store(GREEDY, None) == Cacheable(ok=False, reason=FillReason.PARTIAL)


def test_a_truncated_answer_is_never_stored() -> None:
    assert may_store(GREEDY, final("length")) == Cacheable(ok=False, reason=FillReason.TRUNCATED)


def test_an_aborted_answer_is_cancelled() -> None:
    assert may_store(GREEDY, final("abort")) == Cacheable(ok=False, reason=FillReason.CANCELLED)


def test_a_whole_answer_the_client_left_before_receiving_is_cancelled() -> None:
    assert may_store(GREEDY, final(), cancelled=True) == Cacheable(ok=False, reason=FillReason.CANCELLED)


@pytest.mark.parametrize("fields", [{"temperature": 0.7}, {"temperature": 0.01}, {}, {"top_p": 0.5}],
                         ids=["t0.7", "t0.01", "unset-means-1.0", "top_p-only"])
def test_a_sampled_answer_is_not_stored_without_the_tenants_opt_in(fields: dict[str, Any]) -> None:
    assert is_sampled(req(**fields))
    assert may_store(req(**fields), final()) == Cacheable(ok=False, reason=FillReason.SAMPLED)
    assert may_store(req(**fields), final(), allow_sampled=True) == Cacheable(ok=True, reason=FillReason.OK)


def test_temperature_zero_is_greedy_whatever_top_p_says() -> None:
    request = req(temperature=0, top_p=0.3)
    assert not is_sampled(request)
    assert may_store(request, final()).ok


def test_the_requests_own_opt_out_wins() -> None:
    assert may_store(GREEDY, final(), skip_store=True) == Cacheable(ok=False, reason=FillReason.SKIPPED)


def test_opting_in_to_sampled_answers_never_lets_a_bad_answer_through() -> None:
    sampled = req(temperature=1.0)
    for reply, reason in [(ERROR, FillReason.ERROR), (None, FillReason.PARTIAL),
                          (final("length"), FillReason.TRUNCATED), (final("abort"), FillReason.CANCELLED)]:
        assert may_store(sampled, reply, allow_sampled=True) == Cacheable(ok=False, reason=reason)


def test_reasons_are_a_small_fixed_set_of_label_values() -> None:
    assert {r.value for r in FillReason} == {
        "ok", "skipped", "error", "partial", "cancelled", "truncated", "sampled"}
