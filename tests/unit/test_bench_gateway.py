"""bench/gateway.py's parts: the mock provider's answers and request handling, the load
generator's response parsing and answer checks, the report's arithmetic, the config it writes."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bench import gateway, gateway_report
from bench import mock_openai as mock
from bench.gateway_load import Connection, LoadResult, Response, Target, chat_body, chat_request, check_json, check_sse
from services.ingress.tenants import TenantsFile
from services.shared.settings import load_config_file
from services.shared.tiers import load_tiers

pytestmark = pytest.mark.unit

TEXT = mock.answer_text()


def split_response(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return lines[0], {k.lower(): v for k, v in headers.items()}, body


def unchunk(body: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n"
            return out
        out += rest[:size]
        assert rest[size:size + 2] == b"\r\n"
        body = rest[size + 2:]


def post(body: dict[str, Any] | bytes, extra: str = "") -> bytes:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {len(payload)}\r\n\r\n"
            .encode() + payload)


# --- the mock ------------------------------------------------------------------------------------

def test_the_mock_answers_one_json_body_with_its_text_usage_and_the_requested_model() -> None:
    out, rest, close = mock.handle(mock.MockState(), post(chat_body("some-model", stream=False)))
    status, headers, body = split_response(out)
    assert (status, rest, close) == ("HTTP/1.1 200 OK", b"", False)
    assert int(headers["content-length"]) == len(body)
    answer = json.loads(body)
    assert answer["model"] == "some-model" and answer["object"] == "chat.completion"
    assert answer["usage"] == {"prompt_tokens": mock.PROMPT_TOKENS, "completion_tokens": 64,
                               "total_tokens": mock.PROMPT_TOKENS + 64}
    assert check_json(body, TEXT) is None


def test_the_mock_streams_64_chunks_a_usage_chunk_and_done_in_chunked_encoding() -> None:
    out, _, _ = mock.handle(mock.MockState(), post(chat_body("m", stream=True)))
    status, headers, body = split_response(out)
    assert status == "HTTP/1.1 200 OK" and headers["transfer-encoding"] == "chunked"
    assert headers["content-type"] == "text/event-stream"
    sse = unchunk(body)
    events = [e for e in sse.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert [c["object"] for c in chunks] == ["chat.completion.chunk"] * 65
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 64
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 63 + ["stop"]
    assert check_sse(sse, TEXT) is None


def test_without_include_usage_the_stream_has_no_usage_chunk() -> None:
    body = {**chat_body("m", stream=True), "stream_options": {"include_usage": False}}
    out, _, _ = mock.handle(mock.MockState(), post(body))
    sse = unchunk(split_response(out)[2])
    assert b'"usage"' not in sse
    assert check_sse(sse, TEXT, usage=False) is None
    assert check_sse(sse, TEXT) == "no usage chunk"


def test_the_mock_answers_pipelined_requests_in_order_and_keeps_a_partial_one() -> None:
    state = mock.MockState(chunks=3)
    first, second = post(chat_body("a", stream=False)), post(chat_body("b", stream=True))
    out, rest, close = mock.handle(state, first + second[:-5])
    assert not close and rest == second[:-5]
    assert out.count(b"HTTP/1.1 200 OK") == 1 and b'"model":"a"' in out
    out, rest, _ = mock.handle(state, rest + second[-5:])
    assert rest == b"" and b'"model":"b"' in out and out.endswith(b"0\r\n\r\n")
    assert (state.chat, state.streamed) == (2, 1)


def test_the_mock_refuses_what_it_cannot_read() -> None:
    state = mock.MockState()
    out, _, close = mock.handle(state, post(b"{not json"))
    assert out.startswith(b"HTTP/1.1 400") and not close
    out, _, _ = mock.handle(state, post({"model": "m"}))
    assert out.startswith(b"HTTP/1.1 400") and json.loads(split_response(out)[2])["error"]["param"] == "messages"
    chunked = b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    out, rest, close = mock.handle(state, chunked)
    assert out.startswith(b"HTTP/1.1 411") and close and rest == b""
    out, _, _ = mock.handle(state, b"GET /nowhere HTTP/1.1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 404")
    assert state.chat == 0


def test_the_mock_lists_its_model_counts_calls_and_closes_when_asked() -> None:
    state = mock.MockState()
    out, _, _ = mock.handle(state, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    assert json.loads(split_response(out)[2])["data"][0]["id"] == mock.MODEL
    out, _, close = mock.handle(state, post(chat_body("m", stream=False), "Connection: close\r\n"))
    assert close and out.startswith(b"HTTP/1.1 200")
    out, _, _ = mock.handle(state, b"GET /mock/stats HTTP/1.1\r\n\r\n")
    assert json.loads(split_response(out)[2]) == {"chat": 1, "streamed": 0}


# --- the load generator's checks -----------------------------------------------------------------

def completion(text: str = TEXT, usage: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"choices": [{"message": {"content": text}}],
                       "usage": usage or {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}).encode()


@pytest.mark.parametrize(("body", "why"), [
    (completion(), None),
    (completion("other"), "text differs"),
    (completion(usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 4}), "does not add up"),
    (completion(usage={"prompt_tokens": 1, "completion_tokens": "2", "total_tokens": 3}), "integer counts"),
    (json.dumps({"choices": [{"message": {"content": TEXT}}]}).encode(), "no usage"),
    (b"<html>", "not a chat completion"),
    (b'{"choices": []}', "not a chat completion"),
])
def test_check_json(body: bytes, why: str | None) -> None:
    found = check_json(body, TEXT)
    assert found is None if why is None else (found is not None and why in found)


def events(*chunks: dict[str, Any] | str, tail: bytes = b"") -> bytes:
    return b"".join(b"data: " + (c.encode() if isinstance(c, str) else json.dumps(c).encode()) + b"\n\n"
                    for c in chunks) + tail


def piece(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"delta": {"content": text}, "finish_reason": finish}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}


@pytest.mark.parametrize(("body", "why"), [
    (events(piece("ab"), piece("c", "stop"), USAGE, "[DONE]"), None),
    (events(piece("ab"), piece("c"), {"choices": [{"delta": {}, "finish_reason": "stop"}]}, USAGE, "[DONE]"), None),
    (events(piece("ab"), piece("c", "stop"), USAGE), "[DONE]"),
    (events(piece("ab"), piece("c", "stop"), USAGE, "[DONE]", tail=b"data: x"), "blank line"),
    (events(piece("ab"), piece("c", "stop"), "[DONE]"), "no usage chunk"),
    (events(piece("ab", "stop"), piece("c", "stop"), USAGE, "[DONE]"), "two events"),
    (events(piece("ab"), piece("c"), USAGE, "[DONE]"), "no event with a finish_reason"),
    (events(piece("ab"), piece("x", "stop"), USAGE, "[DONE]"), "text differs"),
    (events(piece("ab"), {"error": {"message": "boom"}}, "[DONE]"), "an error in the stream"),
    (events(piece("ab"), "{oops", "[DONE]"), "not JSON: b'{oops'"),
    (b"event: x\n\n" + events("[DONE]"), "not data"),
])
def test_check_sse(body: bytes, why: str | None) -> None:
    found = check_sse(body, "abc")
    assert found is None if why is None else (found is not None and why in found), found


def test_a_request_is_one_keep_alive_post_with_its_length_and_key() -> None:
    raw = chat_request("127.0.0.1", 81, "/v1/chat/completions", chat_body("m", stream=True), "sk-1")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:81\r\n")
    assert b"Authorization: Bearer sk-1" in head and f"Content-Length: {len(body)}".encode() in head
    assert json.loads(body)["stream_options"] == {"include_usage": True}


# --- the load generator's connection -------------------------------------------------------------

class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


async def answered(conn: Connection, raw: bytes, cut: int) -> Response:
    waiting = asyncio.ensure_future(conn.request(b"GET / HTTP/1.1\r\n\r\n"))
    await asyncio.sleep(0)
    for i in range(0, len(raw), cut):
        conn.data_received(raw[i:i + cut])
    return await waiting


async def test_a_connection_reads_chunked_and_sized_answers_split_anywhere() -> None:
    conn = Connection()
    conn.connection_made(FakeTransport())  # type: ignore[arg-type]
    state = mock.MockState()
    stream = state.respond(b"POST", b"/v1/chat/completions", json.dumps(chat_body("m", stream=True)).encode())
    head, _, body = stream.partition(b"\r\n\r\n")
    stream = head + b"\r\nX-Skinflint-Tier: large\r\nServer: x" + b"\r\n\r\n" + body
    response = await answered(conn, stream, 7)
    assert response.status == 200 and check_sse(response.body, TEXT) is None
    assert response.headers == {"x-skinflint-tier": "large"} and response.first_ns > 0
    plain = state.respond(b"POST", b"/v1/chat/completions", json.dumps(chat_body("m", stream=False)).encode())
    response = await answered(conn, plain, 1000)  # the same connection: keep-alive
    assert response.status == 200 and check_json(response.body, TEXT) is None and response.headers == {}


async def test_a_connection_lost_mid_answer_fails_the_request() -> None:
    conn = Connection()
    conn.connection_made(FakeTransport())  # type: ignore[arg-type]
    waiting = asyncio.ensure_future(conn.request(b"GET / HTTP/1.1\r\n\r\n"))
    await asyncio.sleep(0)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    conn.connection_lost(None)
    with pytest.raises(ConnectionResetError):
        await waiting
    with pytest.raises(ConnectionError):
        await conn.request(b"GET / HTTP/1.1\r\n\r\n")


def test_a_target_counts_a_refusal_as_wrong() -> None:
    target = Target("t", "h", 1, b"", stream=False, text=TEXT)
    assert target.check(Response(429, b'{"error": "slow down"}', 0)) == 'HTTP 429: b\'{"error": "slow down"}\''
    assert target.check(Response(200, completion(), 0)) is None


# --- the report and the config -------------------------------------------------------------------

def test_what_skinflint_adds_is_its_percentile_minus_the_direct_one_over_pooled_slices() -> None:
    pairs = [([1.0, 1.0], [3.0, 4.0]), ([1.0, 2.0], [5.0, 3.0])]
    assert gateway_report.added(pairs, 50) == pytest.approx(3.5 - 1.0)


def test_phases_come_from_the_response_headers() -> None:
    headers = [{"x-skinflint-overhead-ms": "1.0", "x-skinflint-engine-ms": "0.5",
                "x-skinflint-phases-ms": "ingress_in=0.1,to_worker=0.3"},
               {"x-skinflint-overhead-ms": "3.0", "x-skinflint-engine-ms": "0.7",
                "x-skinflint-phases-ms": "ingress_in=0.3,to_worker=0.5"}]
    found = gateway_report.phases(headers)
    assert list(found) == ["in skinflint", "ingress_in", "to_worker", "upstream call"]
    assert found["in skinflint"][0] == pytest.approx(2.0) and found["to_worker"][0] == pytest.approx(0.4)


def run_row(target: str, mode: str, ok: int, errors: int = 0) -> dict[str, Any]:
    result = LoadResult(target, 4, wall_s=2.0, cpu_s=0.1, latencies_ms=[1.0] * ok, errors=errors)
    return gateway_report.saturation_row(result, mode, 0, {"ingress": 0.5, "load generator": 0.1}, ok)


def test_the_report_judges_every_target_and_counts_every_error() -> None:
    slices = {"direct": [{"latencies_ms": [0.1] * 10, "first_byte_ms": [0.1] * 10, "errors": 0}],
              "skinflint": [{"latencies_ms": [1.5] * 9 + [9.0], "first_byte_ms": [1.0] * 10, "errors": 0,
                             "headers": []}]}
    latency = {"json": slices, "stream": slices}
    saturation = [run_row("direct", "json", 20_000), run_row("skinflint", "json", 1_000),
                  run_row("direct", "stream", 5_000), run_row("skinflint", "stream", 150, errors=2)]
    text, checks = gateway_report.report(latency, saturation, argparse.Namespace(chunks=64))
    verdicts = {name: ok for name, ok, _ in checks}
    assert verdicts["added p50 at one client, non-streamed <= 2 ms"]
    assert not verdicts["added p99 at one client, non-streamed <= 5 ms"]  # 9.0 ms is the top 10%
    assert verdicts["saturated req/s, non-streamed >= 400"]  # 500/s
    assert not verdicts["saturated req/s, streamed >= 100"]  # 75/s
    assert not verdicts["no errors"]
    assert "skinflint" in text and "500" in text


def test_the_configs_it_writes_validate_and_point_the_tier_at_the_mock(tmp_path: Path) -> None:
    tenants_path, tiers_path = gateway.write_configs(tmp_path, 1234)
    tiers = load_tiers(tiers_path)
    tier = tiers.tiers[gateway.TIER]
    assert tier.kind == "upstream" and tier.upstream is not None
    assert tier.upstream.base_url == "http://127.0.0.1:1234/v1" and tier.upstream.retries == 0
    assert tiers.tier_of(gateway.PUBLIC_MODEL) == gateway.TIER
    tenants = load_config_file(tenants_path, TenantsFile)
    assert any(k.key == gateway.BENCH_KEY for t in tenants.tenants for k in t.keys)
