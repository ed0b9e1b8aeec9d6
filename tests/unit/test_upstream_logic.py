"""The upstream worker's plain logic: the circuit breaker, the retry policy, reading a provider's
answers (server-sent events, JSON bodies, errors), the request it is sent, and the tier's options
applied to the worker's settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contracts.v1 import ChatRequest
from services.shared.errors import BadRequest
from services.shared.settings import ConfigError
from services.worker.breaker import CircuitBreaker, State
from services.worker.provider import (
    ProviderError,
    ProviderProtocolError,
    SseParser,
    StreamState,
    error_message,
    error_param,
    request_body,
    whole_answer,
)
from services.worker.settings import WorkerSettings
from services.worker.tier import is_local, resolve_tier
from services.worker.upstream import backoff, failed, refused
from tests.support.fake_provider import USAGE, stream_events
from tests.support.tier_files import tiers_file

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- the circuit breaker ----------------------------------------------------------------------

def test_the_breaker_opens_after_failures_in_a_row_and_a_success_resets_the_count() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=3, open_s=10, clock=clock)
    for _ in range(2):
        assert b.acquire()
        b.failure("boom")
    assert b.acquire()
    b.success()  # the count starts again
    for _ in range(2):
        assert b.acquire()
        b.failure("boom")
    assert b.state is State.CLOSED and b.would_allow()
    b.failure("last straw")
    assert b.state is State.OPEN and not b.would_allow() and not b.acquire()
    assert b.last_failure == "last straw" and b.reopens_in() == 10


def test_after_open_s_one_probe_goes_through_and_its_success_closes_the_breaker() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, open_s=10, clock=clock)
    b.failure("down")
    clock.now += 9.9
    assert not b.acquire()
    clock.now += 0.1
    assert b.state is State.HALF_OPEN and b.would_allow()
    assert b.acquire()  # the probe
    assert not b.would_allow() and not b.acquire()  # the others wait for its outcome
    b.success()
    assert b.state is State.CLOSED and b.acquire() and b.acquire()


def test_a_failed_probe_opens_the_breaker_again_for_open_s() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=2, open_s=5, clock=clock)
    b.failure("a")
    b.failure("b")
    clock.now += 5
    assert b.acquire()
    b.failure("still down")
    assert b.state is State.OPEN and b.reopens_in() == 5 and b.last_failure == "still down"


def test_a_probe_that_tells_nothing_passes_its_turn_on() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, open_s=1, clock=clock)
    b.failure("down")
    clock.now += 1
    assert b.acquire()
    b.release()  # the client went away
    assert b.state is State.HALF_OPEN and b.acquire()


# --- retries ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("jitter", "expected"), [(0.0, [0.1, 0.2, 0.4]), (0.5, [0.2, 0.4, 0.8]),
                                                  (1.0, [0.3, 0.6, 1.2])])
def test_backoff_doubles_each_retry_jittered_by_half_either_way(jitter: float, expected: list[float]) -> None:
    got = [backoff(attempt, 0.2, lambda: jitter) for attempt in range(3)]
    assert got == pytest.approx(expected)


def test_backoff_waits_at_least_what_the_provider_asked_for() -> None:
    assert backoff(0, 0.2, lambda: 0.5, retry_after=3.0) == 3.0


@pytest.mark.parametrize(("status", "code", "retryable", "counts", "outcome"), [
    (400, "invalid_request_error", False, False, "client_error"),
    (404, "invalid_request_error", False, False, "client_error"),
    (422, "invalid_request_error", False, False, "client_error"),
    (401, "upstream_auth", False, True, "auth_error"),
    (403, "upstream_auth", False, True, "auth_error"),
    (429, "upstream_unavailable", True, True, "rate_limited"),
    (500, "upstream_unavailable", True, True, "server_error"),
    (503, "upstream_unavailable", True, True, "server_error"),
    (409, "upstream_error", False, False, "server_error"),
])
def test_provider_statuses_map_to_the_clients_error_and_the_retry_policy(
        status: int, code: str, retryable: bool, counts: bool, outcome: str) -> None:
    body = json.dumps({"error": {"message": "provider says no", "param": "temperature"}}).encode()
    f = refused("large", status, body, {"Retry-After": "2"}, "SF_LARGE_API_KEY")
    assert (f.error.code, f.retryable, f.counts, f.outcome) == (code, retryable, counts, outcome)
    assert "provider says no" in f.error.message
    if status in (400, 404, 422):
        assert isinstance(f.error, BadRequest) and f.error.status == 400 and f.error.param == "temperature"
    if status in (401, 403):
        assert f.error.status == 502 and "SF_LARGE_API_KEY" in f.error.message
    if retryable:
        assert f.error.status == 503 and f.retry_after == 2.0


def test_timeouts_are_504_and_connection_errors_503_both_retried() -> None:
    timeout = failed("large", TimeoutError(), 1.5)
    assert (timeout.error.status, timeout.error.code, timeout.retryable) == (504, "upstream_timeout", True)
    assert "1.5 s" in timeout.error.message
    refused_ = failed("large", ConnectionRefusedError(111, "Connection refused"), 1.5)
    assert (refused_.error.status, refused_.outcome, refused_.retryable) == (503, "connection_error", True)
    with pytest.raises(KeyError):
        failed("large", KeyError("a bug of ours is not the provider's failure"), 1.0)


# --- reading the provider's answers ------------------------------------------------------------

def test_sse_events_split_anywhere_across_reads_come_out_whole() -> None:
    raw = b"".join(stream_events(["Hello", " world"], "stop", USAGE))
    for size in (1, 2, 5, 13, len(raw)):
        parser, events = SseParser(), []
        for i in range(0, len(raw), size):
            events += parser.feed(raw[i:i + size])
        assert len(events) == 6 and events[-1] == b"[DONE]"
        assert json.loads(events[1])["choices"][0]["delta"]["content"] == "Hello"


def test_sse_comments_crlf_and_multiline_data() -> None:
    parser = SseParser()
    assert parser.feed(b": keep-alive\r\n\r\nevent: message\r\ndata: {\"a\":\r\ndata: 1}\r\n") == []
    assert parser.feed(b"\r\n") == [b'{"a":\n1}']
    assert parser.feed(b"data:[DONE]\n\n") == [b"[DONE]"]


def test_events_already_read_become_one_step_with_the_same_text() -> None:
    events = stream_events(["Paris", " is", " the", " capital"], "length", USAGE)
    state, parser = StreamState(prompt_estimate=20), SseParser()
    steps = [s for s in (state.read(parser.feed(e)) for e in events[:3]) if s is not None]
    assert [s.delta for s in steps] == ["Paris", " is"]
    # Estimates until the provider's counts: the prompt from its characters, a token per event.
    assert (steps[-1].prompt_tokens, steps[-1].completion_tokens, steps[-1].finished) == (20, 2, False)
    last = state.read(parser.feed(b"".join(events[3:])))  # the rest in one read
    assert last is not None and last.delta == " the capital" and last.finished
    assert last.finish_reason == "length"
    assert (last.prompt_tokens, last.cached_prompt_tokens, last.completion_tokens) == (11, 3, 7)


def test_a_stream_without_usage_keeps_its_estimates_and_an_error_event_raises() -> None:
    state = StreamState(prompt_estimate=9)
    last = state.read(SseParser().feed(b"".join(stream_events(["a", "b"], "stop", None))))
    assert last is not None and last.finished and (last.prompt_tokens, last.completion_tokens) == (9, 2)
    with pytest.raises(ProviderError, match="overloaded"):
        StreamState(prompt_estimate=1).read([b'{"error": {"message": "overloaded", "code": 500}}'])


def test_a_whole_answer_is_one_finished_step_with_the_providers_usage() -> None:
    body = json.dumps({"choices": [{"message": {"content": "Paris."}, "finish_reason": "stop"}], "usage": USAGE})
    step = whole_answer(body.encode())
    assert (step.delta, step.finished, step.finish_reason) == ("Paris.", True, "stop")
    assert (step.prompt_tokens, step.cached_prompt_tokens, step.completion_tokens) == (11, 3, 7)


@pytest.mark.parametrize(("body", "message"), [
    (b'{"error": {"message": "bad temperature", "param": "temperature"}}', "bad temperature"),
    (b'{"object": "error", "message": "vLLM style"}', "vLLM style"),
    (b'{"detail": "Not Found"}', "Not Found"),
    (b"<html>Bad Gateway</html>", "HTTP 502: <html>Bad Gateway</html>"),
    (b"", "HTTP 502"),
])
def test_the_reason_is_found_in_every_kind_of_error_body(body: bytes, message: str) -> None:
    assert error_message(body, "HTTP 502") == message


def test_error_param_is_read_when_named() -> None:
    assert error_param(b'{"error": {"message": "x", "param": "stop"}}') == "stop"
    assert error_param(b'{"error": {"message": "x"}}') is None and error_param(b"nope") is None


# --- the request a provider gets ----------------------------------------------------------------

def test_the_request_carries_the_honoured_fields_under_the_providers_model_name() -> None:
    req = ChatRequest.model_validate({
        "model": "smollm2-135m-remote", "messages": [{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "temperature": 0.2, "top_p": 0.9, "stop": "END", "seed": 7, "presence_penalty": 0.5,
        "frequency_penalty": -0.5, "user": "u1",
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}})
    body = request_body(req, "gpt-4.1", 64, stream=True)
    assert body == {
        "model": "gpt-4.1", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_tokens": 64, "temperature": 0.2, "top_p": 0.9, "stop": ["END"], "seed": 7, "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "stream": True, "stream_options": {"include_usage": True}}


def test_fields_left_unset_are_left_out() -> None:
    req = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "Hi"}]})
    assert request_body(req, "p", 512, stream=False) == {
        "model": "p", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 512}


# --- the tier's options -------------------------------------------------------------------------

def upstream_tier(base_url: str = "https://api.example.com/v1", **extra: Any) -> dict[str, Any]:
    return {"kind": "upstream", "model": "big-remote",
            "upstream": {"base_url": base_url, "model": "gpt-x", "api_key_env": "SF_TEST_KEY", **extra}}


def test_an_unknown_tier_is_a_config_error_naming_sf_tier_and_the_file(tmp_path: Path) -> None:
    path = tiers_file({"small": {"kind": "vllm", "model": "s"}}, tmp_path)
    with pytest.raises(ConfigError, match=rf"SF_TIER: tier 'gold' is not in {path} \(tiers: small\)"):
        resolve_tier(WorkerSettings(tier="gold", tiers_file=path))


def test_the_files_engine_options_apply_where_the_environment_set_none(tmp_path: Path) -> None:
    path = tiers_file({"small": {"kind": "vllm", "model": "tiny", "engine": {
        "max_num_seqs": 8, "kv_cache_gib": 1.5, "quantization": "fp8", "kv_cache_dtype": "fp8", "dtype": "bfloat16"}}},
        tmp_path)
    served = resolve_tier(WorkerSettings(tier="small", tiers_file=path, max_num_seqs=16))
    s = served.settings
    assert (s.max_num_seqs, s.kv_cache_gib, s.quantization, s.kv_cache_dtype, s.dtype) == (16, 1.5, "fp8", "fp8",
                                                                                          "bfloat16")
    assert s.model_name == "tiny" and served.api_key is None


def test_an_upstream_tier_takes_its_slots_and_key_from_the_file_and_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SF_TEST_KEY", "sk-test")
    path = tiers_file({"large": upstream_tier(max_inflight=3)}, tmp_path)
    served = resolve_tier(WorkerSettings(tier="large", tiers_file=path))
    assert (served.settings.max_num_seqs, served.settings.model_name, served.api_key) == (3, "big-remote", "sk-test")
    assert served.settings.interactive_reserve == 2  # fewer than the slots, so bulk can run


def test_an_unset_key_is_a_config_error_unless_the_provider_is_on_this_machine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SF_TEST_KEY", raising=False)
    remote = tiers_file({"large": upstream_tier()})
    with pytest.raises(ConfigError, match=r"tiers.large.upstream.api_key_env: the environment variable SF_TEST_KEY"):
        resolve_tier(WorkerSettings(tier="large", tiers_file=remote))
    local = tiers_file({"large": upstream_tier("http://127.0.0.1:8100/v1")}, tmp_path)
    assert resolve_tier(WorkerSettings(tier="large", tiers_file=local)).api_key is None


@pytest.mark.parametrize(("url", "local"), [("http://127.0.0.1:8100/v1", True), ("http://localhost/v1", True),
                                            ("http://[::1]:80/v1", True), ("https://api.openai.com/v1", False),
                                            ("http://10.0.0.5/v1", False)])
def test_is_local(url: str, local: bool) -> None:
    assert is_local(url) is local


def test_an_event_that_is_not_json_among_others_is_named() -> None:
    with pytest.raises(ProviderProtocolError, match="not JSON: b'nope'"):
        StreamState(prompt_estimate=1).read([b'{"choices": []}', b"nope"])


def test_plain_and_general_events_mixed_in_one_read_and_split_after_it() -> None:
    parser = SseParser()
    got = parser.feed(b'data: 1\n\n: ping\n\ndata: {"a":\ndata: 2}\n\n\ndata: 3\n\ndata: 4')
    assert got == [b"1", b'{"a":\n2}', b"3"]
    assert parser.feed(b"\n") == [] and parser.feed(b"\n") == [b"4"]
    assert parser.feed(b"data: 5\r\n") == [] and parser.feed(b"\r\ndata: 6\n\n") == [b"5", b"6"]
