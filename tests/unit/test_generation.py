"""The worker's answering logic, with the fake engine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from contracts.subjects import Priority
from contracts.v1 import ChatMessage, Chunk, ErrorReply, Final, TaskEnvelope
from services.worker.generation import ENGINE_PRIORITY, WorkerIdentity, answer
from tests.support.fakes import REPLY, FakeEngine, ListSink

pytestmark = pytest.mark.unit
WHO = WorkerIdentity("w1", "small", "smollm2-135m", default_max_tokens=64)


class BrokenTemplate(FakeEngine):
    """An engine whose chat template fails to render (as a Jinja error would)."""

    def render(self, messages: Sequence[ChatMessage]) -> list[int]:
        raise ValueError("jinja2.exceptions.TemplateError: Conversation roles must alternate")


def envelope(**request: object) -> TaskEnvelope:
    raw = json.loads((Path(__file__).resolve().parent.parent / "examples/v1/task_envelope.json").read_text())
    raw["request"].update(request)
    return TaskEnvelope.model_validate(raw)


async def test_streaming_answer_sends_chunks_then_final_and_one_usage_event() -> None:
    sink, engine = ListSink(), FakeEngine()
    final = await answer(envelope(stream=True, max_tokens=4), engine, sink, WHO)
    assert isinstance(final, Final)
    chunks = [r for r in sink.replies if isinstance(r, Chunk)]
    assert [c.seq for c in chunks] == [0, 1, 2, 3]
    assert "".join(c.delta for c in chunks) == final.text == " ".join(REPLY[:4])
    assert final.finish_reason == "length"
    assert sink.replies[-1] is final
    [usage] = sink.usages
    assert (usage.status, usage.completion_tokens, usage.prompt_tokens) == ("ok", 4, final.usage.prompt_tokens)


async def test_non_streaming_sends_only_the_final() -> None:
    sink = ListSink()
    await answer(envelope(stream=False, max_tokens=3), FakeEngine(), sink, WHO)
    assert [type(r) for r in sink.replies] == [Final]


async def test_context_overflow_is_a_400_naming_max_tokens_recorded_at_no_charge() -> None:
    sink = ListSink()
    result = await answer(envelope(max_tokens=10_000), FakeEngine(max_model_len=64), sink, WHO)
    assert isinstance(result, ErrorReply)
    assert (result.status, result.param, result.code) == (400, "max_tokens", "context_length_exceeded")
    [usage] = sink.usages
    assert (usage.status, usage.prompt_tokens, usage.completion_tokens) == ("error", 0, 0)


async def test_a_renderer_that_raises_answers_at_once_naming_the_request_and_records_one_event() -> None:
    sink = ListSink()
    env = envelope(max_tokens=8)
    result = await answer(env, BrokenTemplate(), sink, WHO)
    assert isinstance(result, ErrorReply) and result.status == 500
    assert env.request_id in result.message
    assert sink.sent == [("usage", "error"), ("reply", "ErrorReply")]
    assert (sink.usages[0].prompt_tokens, sink.usages[0].completion_tokens) == (0, 0)


@pytest.mark.parametrize("stream", [False, True])
async def test_the_usage_event_goes_out_before_the_last_reply(stream: bool) -> None:
    sink = ListSink()
    env = envelope(max_tokens=3, stream=stream)
    await answer(env, FakeEngine(), sink, WHO)
    # The answer is offered to the cache last of all, after the client has it.
    assert sink.sent[-3:] == [("usage", "ok"), ("reply", "Final"), ("announce", env.request_id)]
    assert [kind for kind, _ in sink.sent].count("usage") == 1


async def test_engine_failure_is_a_500_and_still_reports_usage() -> None:
    sink = ListSink()
    env = envelope(max_tokens=8)
    result = await answer(env, FakeEngine(fail_after=2), sink, WHO)
    assert isinstance(result, ErrorReply) and result.status == 500 and env.request_id in result.message
    assert sink.sent[-2:] == [("usage", "error"), ("reply", "ErrorReply")]
    assert [u.status for u in sink.usages] == ["error"]
    assert sink.usages[0].completion_tokens == 2


async def test_cancellation_aborts_the_engine_and_records_tokens_spent() -> None:
    sink, engine = ListSink(), FakeEngine(seconds_per_token=0.05)
    env = envelope(max_tokens=12, stream=True)
    task = asyncio.create_task(answer(env, engine, sink, WHO))
    while len(sink.replies) < 2:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.aborted == [env.request_id]
    [usage] = sink.usages
    assert usage.status == "aborted" and usage.completion_tokens >= 2


async def test_bulk_runs_behind_interactive_in_the_engine() -> None:
    engine = FakeEngine()
    await answer(envelope(max_tokens=1), engine, ListSink(), WHO)
    bulk = envelope(max_tokens=1).model_copy(update={"priority": Priority.BULK})
    await answer(bulk, engine, ListSink(), WHO)
    assert engine.priorities == [ENGINE_PRIORITY[Priority.INTERACTIVE], ENGINE_PRIORITY[Priority.BULK]]
    assert ENGINE_PRIORITY[Priority.INTERACTIVE] < ENGINE_PRIORITY[Priority.BULK]


async def test_only_a_whole_answer_the_cache_asked_for_is_announced_and_it_carries_the_cache_note() -> None:
    asked = envelope(max_tokens=3)
    assert asked.cache is not None and asked.cache.fill
    sink = ListSink()
    final = await answer(asked, FakeEngine(), sink, WHO)
    assert isinstance(final, Final) and sink.announced == [final] and final.cache == asked.cache
    [usage] = sink.usages
    assert usage.cache_outcome == asked.cache.outcome.value
    for env, engine in ((envelope(max_tokens=3).model_copy(update={"cache": None}), FakeEngine()),
                        (envelope(max_tokens=8), FakeEngine(fail_after=2))):
        sink = ListSink()
        await answer(env, engine, sink, WHO)
        assert sink.announced == []
