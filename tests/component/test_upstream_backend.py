"""The upstream backend against a scripted provider (an aiohttp server in the test's loop), through
``generation.answer`` as the worker runs it: answers, usage, errors, retries, the breaker, aborts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from contracts.subjects import Priority
from contracts.v1 import Chunk, ErrorReply, Final, TaskEnvelope
from services.shared.errors import Unavailable
from services.shared.tiers import UpstreamOptions
from services.worker.backend import WorkerIdentity
from services.worker.breaker import State
from services.worker.generation import answer
from services.worker.upstream import UNAVAILABLE, UpstreamBackend
from tests.support.fake_provider import USAGE, WORDS, FakeProvider
from tests.support.fakes import ListSink

pytestmark = pytest.mark.component
WHO = WorkerIdentity("w-up", "remote", "big-remote", default_max_tokens=64)
EXAMPLE = Path(__file__).resolve().parents[1] / "examples/v1/task_envelope.json"


def envelope(request_id: str = "r1", **request: object) -> TaskEnvelope:
    raw = json.loads(EXAMPLE.read_text())
    raw["request"].update(request)
    raw["request_id"] = request_id
    return TaskEnvelope.model_validate(raw)


class Sleeps:
    """Backoff sleeps, recorded and skipped."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


@asynccontextmanager
async def upstream(provider: FakeProvider | None = None, **options: Any) -> AsyncIterator[
        tuple[FakeProvider, UpstreamBackend, Sleeps]]:
    provider = await (provider or FakeProvider()).start()
    opts = UpstreamOptions.model_validate({"base_url": provider.base_url, "model": "remote-model",
                                           "api_key_env": "SF_TEST_KEY", "retries": 2, "backoff_s": 0.01,
                                           "headers": {"X-Team": "blue"}, **options})
    sleeps = Sleeps()
    backend = UpstreamBackend("remote", opts, "sk-test", rng=lambda: 0.5, sleep=sleeps)
    try:
        yield provider, backend, sleeps
    finally:
        await backend.close()
        await provider.stop()


def retries() -> float:
    return REGISTRY.get_sample_value("skinflint_upstream_retries_total", {"tier": "remote"}) or 0.0


async def test_a_plain_request_is_one_json_call_answered_with_the_providers_usage() -> None:
    async with upstream() as (provider, backend, _):
        sink = ListSink()
        final = await answer(envelope(stream=False, temperature=0.3, max_tokens=None), backend, sink, WHO)
    assert isinstance(final, Final) and final.text == "".join(WORDS) and final.finish_reason == "stop"
    assert (final.model, final.tier) == ("big-remote", "remote")
    assert (final.usage.prompt_tokens, final.usage.cached_prompt_tokens, final.usage.completion_tokens) == (11, 3, 7)
    [usage] = sink.usages
    assert (usage.status, usage.prompt_tokens, usage.cached_prompt_tokens, usage.completion_tokens) == ("ok", 11, 3, 7)
    [sent] = provider.requests
    assert sent["model"] == "remote-model" and sent["temperature"] == 0.3 and sent["max_tokens"] == 64
    assert "stream" not in sent
    assert provider.headers[0]["Authorization"] == "Bearer sk-test" and provider.headers[0]["X-Team"] == "blue"
    assert provider.headers[0]["Content-Type"] == "application/json"


@pytest.mark.parametrize("cut", [None, "bytes", "all"])
async def test_a_streamed_request_relays_the_text_whole_however_the_events_arrive(cut: str | None) -> None:
    async with upstream(FakeProvider(cut=cut)) as (provider, backend, _):
        sink = ListSink()
        final = await answer(envelope(stream=True, max_tokens=5), backend, sink, WHO)
    assert isinstance(final, Final) and final.finish_reason == "length"
    chunks = [r for r in sink.replies if isinstance(r, Chunk)]
    assert "".join(c.delta for c in chunks) == final.text == "".join(WORDS[:5])
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    if cut == "all":
        assert len(chunks) == 1  # every event was already read: one step
    assert sink.usages[0].completion_tokens == USAGE["completion_tokens"]  # the provider's count, not ours
    assert provider.requests[0]["stream"] is True
    assert provider.requests[0]["stream_options"] == {"include_usage": True}


async def test_a_request_the_provider_refuses_is_a_400_with_its_message_never_retried() -> None:
    async with upstream() as (provider, backend, sleeps):
        provider.fail(400, "temperature must be at most 1.5", param="temperature")
        result = await answer(envelope(), backend, ListSink(), WHO)
        assert backend.breaker.state is State.CLOSED
    assert isinstance(result, ErrorReply) and result.status == 400 and result.param == "temperature"
    assert "temperature must be at most 1.5" in result.message
    assert len(provider.requests) == 1 and sleeps.delays == []


async def test_a_refused_key_is_a_502_naming_its_environment_variable() -> None:
    async with upstream() as (provider, backend, _):
        provider.fail(401, "Incorrect API key provided")
        result = await answer(envelope(), backend, ListSink(), WHO)
    assert isinstance(result, ErrorReply) and (result.status, result.code) == (502, "upstream_auth")
    assert "SF_TEST_KEY" in result.message and "Incorrect API key" in result.message


async def test_server_errors_are_retried_with_backoff_before_any_output() -> None:
    before = retries()
    async with upstream() as (provider, backend, sleeps):
        provider.fail(500, times=1)
        provider.fail(429, times=1, headers={"Retry-After": "0.05"})
        result = await answer(envelope(stream=True), backend, ListSink(), WHO)
    assert isinstance(result, Final) and result.text == "".join(WORDS)
    assert len(provider.requests) == 3
    assert sleeps.delays == pytest.approx([0.01, 0.05])  # doubled (0.02), but Retry-After asked for more
    assert retries() - before == 2


async def test_a_provider_down_after_the_retries_is_a_503_and_counts_once_for_the_breaker() -> None:
    async with upstream() as (provider, backend, sleeps):
        provider.fail(503, "overloaded", times=3)
        sink = ListSink()
        result = await answer(envelope(), backend, sink, WHO)
        assert backend.breaker._in_a_row == 1
    assert isinstance(result, ErrorReply) and (result.status, result.code) == (503, UNAVAILABLE)
    assert "overloaded" in result.message and "after 3 attempts" in result.message
    assert len(provider.requests) == 3 and len(sleeps.delays) == 2
    assert [u.status for u in sink.usages] == ["error"] and sink.usages[0].prompt_tokens == 0


async def test_a_provider_too_slow_is_a_504_after_the_retries() -> None:
    async with upstream(FakeProvider(delay_s=1.0), timeout_s=0.1, retries=1) as (provider, backend, _):
        result = await answer(envelope(), backend, ListSink(), WHO)
        await asyncio.sleep(0.05)
    assert isinstance(result, ErrorReply) and (result.status, result.code) == (504, "upstream_timeout")
    assert len(provider.requests) == 2 and len(provider.hung_up) == 2  # each timed-out request was hung up


async def test_output_already_sent_is_never_sent_again() -> None:
    async with upstream(FakeProvider(drop_after=2)) as (provider, backend, sleeps):
        sink = ListSink()
        result = await answer(envelope(stream=True), backend, sink, WHO)
    assert isinstance(result, ErrorReply) and result.status == 503
    assert [type(r) for r in sink.replies] == [Chunk, ErrorReply]  # "Paris", then the error
    assert len(provider.requests) == 1 and sleeps.delays == []
    assert sink.usages[0].completion_tokens == 1  # an estimate: one token per event seen


async def test_the_breaker_opens_refuses_at_once_and_a_probe_closes_it() -> None:
    async with upstream(retries=0, breaker={"failures": 2, "open_s": 0.3}) as (provider, backend, _):
        provider.fail(500, "boom", times=2)
        for i in range(2):
            assert backend.unavailable() is None
            await answer(envelope(f"f{i}"), backend, ListSink(), WHO)
        reason = backend.unavailable()
        assert reason is not None and reason.startswith(f"{UNAVAILABLE}: tier 'remote'") and "boom" in reason
        assert REGISTRY.get_sample_value("skinflint_upstream_breaker_state", {"tier": "remote"}) == State.OPEN
        with pytest.raises(Unavailable):  # a task that got past the check is refused unsent
            await anext(aiter(backend.stream(backend.prepare(envelope("late"), WHO))))
        assert len(provider.requests) == 2
        await asyncio.sleep(0.3)
        assert backend.unavailable() is None and backend.breaker.state is State.HALF_OPEN
        result = await answer(envelope("probe"), backend, ListSink(), WHO)
        assert isinstance(result, Final) and backend.breaker.state is State.CLOSED


async def test_cancelling_a_streamed_answer_hangs_up_on_the_provider_and_charges_what_was_seen() -> None:
    async with upstream(FakeProvider(write_pause_s=0.2)) as (provider, backend, _):
        sink = ListSink()
        task = asyncio.create_task(answer(envelope(stream=True), backend, sink, WHO))
        while not any(isinstance(r, Chunk) for r in sink.replies):
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while not provider.hung_up:
            await asyncio.sleep(0.01)
        assert backend.breaker.state is State.CLOSED and backend.breaker._in_a_row == 0
    [usage] = sink.usages
    assert usage.status == "aborted" and usage.completion_tokens >= 1 and usage.prompt_tokens > 0


async def test_a_bulk_task_is_asked_for_one_json_body_even_when_it_says_stream() -> None:
    async with upstream() as (_, backend, _):
        job = backend.prepare(envelope(stream=True).model_copy(update={"priority": Priority.BULK}), WHO)
    assert not job.stream and b'"stream"' not in job.body
