"""The worker's answering logic, with the fake engine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from contracts.subjects import Priority
from contracts.v1 import (
    Accepted,
    CacheNote,
    CacheOutcome,
    CacheVerdict,
    ChatMessage,
    Chunk,
    ErrorReply,
    Final,
    TaskEnvelope,
)
from services.worker import generation
from services.worker.backend import ENGINE_PRIORITY, EngineBackend, WorkerIdentity
from services.worker.generation import ReplySink, VerdictGate
from tests.support.fakes import REPLY, FakeEngine, ListSink

pytestmark = pytest.mark.unit
WHO = WorkerIdentity("w1", "small", "smollm2-135m", default_max_tokens=64)


class BrokenTemplate(FakeEngine):
    """An engine whose chat template fails to render (as a Jinja error would)."""

    def render(self, messages: Sequence[ChatMessage]) -> list[int]:
        raise ValueError("jinja2.exceptions.TemplateError: Conversation roles must alternate")


async def answer(env: TaskEnvelope, engine: FakeEngine, sink: ReplySink, who: WorkerIdentity,
                 gate: VerdictGate | None = None) -> Final | ErrorReply | None:
    """``generation.answer`` with the fake engine behind the self-hosted backend."""
    return await generation.answer(env, EngineBackend(engine), sink, who, gate=gate)


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


# --- a task the cache handed on before deciding (VerdictGate) -----------------------------------

def pending(**request: object) -> TaskEnvelope:
    return envelope(**request).model_copy(update={"cache_pending": True, "cache": None})


def gate_for(verdict: CacheVerdict | None, timeout_s: float = 5.0, after_s: float = 0.0) -> VerdictGate:
    """A gate whose verdict arrives ``after_s`` after the task starts (never, for None)."""
    future: asyncio.Future[CacheVerdict] = asyncio.get_running_loop().create_future()
    if verdict is not None:
        asyncio.get_running_loop().call_later(after_s, future.set_result, verdict)
    return VerdictGate(future, timeout_s, WHO.worker_id)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_pending_task_sends_nothing_until_a_miss_verdict_then_answers_with_its_note(stream: bool) -> None:
    sink, engine = ListSink(), FakeEngine()
    note = CacheNote(outcome=CacheOutcome.MISS, fill=True)
    env = pending(stream=stream, max_tokens=3)
    task = asyncio.create_task(answer(env, engine, sink, WHO, gate=gate_for(
        CacheVerdict(request_id=env.request_id, serve=False, note=note, query_embedding=[0.6, 0.8]), after_s=0.2)))
    await asyncio.sleep(0.1)
    assert sink.sent == []  # the engine has answered (zero latency); the answer waits
    final = await task
    assert isinstance(final, Final) and final.cache == note
    [usage] = sink.usages
    assert usage.cache_outcome == "miss"
    # The model's answer is learnt with the embedding the verdict carried.
    assert sink.sent[-1] == ("announce", env.request_id)
    if stream:  # ingress hears the note before the first chunk
        assert isinstance(sink.replies[0], Accepted) and sink.replies[0].cache == note
        assert isinstance(sink.replies[1], Chunk)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_served_verdict_drops_the_answer_unsent_and_uncharged(stream: bool) -> None:
    sink, engine = ListSink(), FakeEngine(seconds_per_token=0.01)
    env = pending(stream=stream, max_tokens=8)
    served = CacheNote(outcome=CacheOutcome.SEMANTIC, similarity=0.93)
    result = await answer(env, engine, sink, WHO, gate=gate_for(
        CacheVerdict(request_id=env.request_id, serve=True, note=served)))
    assert result is None and sink.sent == []
    assert engine.aborted == [env.request_id]


async def test_no_verdict_in_time_answers_as_a_miss_with_the_cache_recorded_skipped() -> None:
    sink = ListSink()
    final = await answer(pending(max_tokens=2), FakeEngine(), sink, WHO, gate=gate_for(None, timeout_s=0.05))
    assert isinstance(final, Final) and final.cache is not None
    assert final.cache.outcome is CacheOutcome.SKIPPED and "timeout" in (final.cache.reason or "")
    assert sink.usages[0].cache_outcome == "skipped"


async def test_an_error_found_before_the_verdict_waits_for_it_and_a_served_one_drops_it() -> None:
    sink = ListSink()
    env = pending(max_tokens=10_000)  # does not fit: a 400 before the engine runs
    served = CacheNote(outcome=CacheOutcome.SEMANTIC, similarity=0.9)
    result = await answer(env, FakeEngine(max_model_len=64), sink, WHO, gate=gate_for(
        CacheVerdict(request_id=env.request_id, serve=True, note=served), after_s=0.05))
    assert result is None and sink.sent == []
