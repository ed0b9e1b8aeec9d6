"""The cache stage on the real request path: nats-server, JetStream KV, Qdrant local mode, the real
embedder and verifier, ingress over HTTP and WebSocket, a worker on the fake engine."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.integration.cache_chat import ACME, ADMIN, SHADOW, ask, chat_stack, outcome, stores_seen, until_declined
from tests.integration.conftest import (
    AUTH,
    FakeEngine,
    NatsServer,
    chat,
    running_cache,
)
from tests.support.usage_stream import usage_events

pytestmark = pytest.mark.integration


async def test_a_repeated_request_is_an_exact_hit_charged_nothing_and_saving_its_cost(
    nats_server: NatsServer, tenants_file: Path
) -> None:
    async with chat_stack(nats_server.url, tenants_file) as (_, client, _cache):
        first = await ask(client, chat("Which city is the capital of France?", temperature=0))
        second = await ask(client, chat("Which city is the capital of France?", temperature=0))
    assert outcome(first) == "miss" and outcome(second) == "exact"
    assert second.headers["x-skinflint-served-by"].startswith("cache:")
    assert second.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    assert second.json()["usage"]["completion_tokens"] == 0
    events = await usage_events(nats_server.url)
    hit = events[second.headers["x-request-id"]]
    assert (hit["cache_outcome"], hit["prompt_tokens"], hit["completion_tokens"]) == ("exact", 0, 0)
    # What the hit saved: the first answer's own tokens, at the tier that produced them.
    assert hit["cache_source_tier"] == "small"
    assert hit["cache_source_completion_tokens"] == first.json()["usage"]["completion_tokens"] > 0
    assert hit["cache_source_prompt_tokens"] == first.json()["usage"]["prompt_tokens"]
    assert events[first.headers["x-request-id"]]["cache_outcome"] == "miss"


async def test_key_order_in_the_body_does_not_change_the_key(nats_server: NatsServer, tenants_file: Path) -> None:
    one = ('{"model": "smollm2-135m", "temperature": 0, "max_tokens": 40, '
           '"messages": [{"role": "user", "content": "Name  the largest ocean."}]}')
    other = ('{"messages": [{"content": "Name the largest ocean.", "role": "user"}], '
             '"max_tokens": 40, "temperature": 0, "model": "smollm2-135m"}')
    async with chat_stack(nats_server.url, tenants_file) as (_, client, _cache):
        r1 = await ask(client, json.loads(one))
        r2 = await ask(client, json.loads(other))
    assert (outcome(r1), outcome(r2)) == ("miss", "exact")


async def test_the_same_prompt_from_another_tenant_never_hits(nats_server: NatsServer, tenants_file: Path) -> None:
    body = chat("What is the boiling point of water at sea level?", temperature=0)
    async with chat_stack(nats_server.url, tenants_file) as (_, client, _cache):
        await ask(client, body)
        assert outcome(await ask(client, body)) == "exact"
        assert outcome(await ask(client, chat("what's the boiling point of water at sea level?",
                                              temperature=0))) == "semantic"
        # acme has stored nothing yet: neither demo's entry nor a near one is ever served to it.
        reworded = await ask(client, chat("what's the boiling point of water at sea level?", temperature=0),
                             headers=ACME)
        same = await ask(client, body, headers=ACME)
    assert (outcome(reworded), outcome(same)) == ("miss", "semantic")  # the second: acme's own first answer


@pytest.mark.parametrize("change", [
    {"messages": [{"role": "system", "content": "Answer in French."},
                  {"role": "user", "content": "What is the capital of Italy?"}]},
    {"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]},
    {"response_format": {"type": "json_object"}},
    {"max_tokens": 7},
    {"top_p": 0.5},
    {"seed": 7},
    {"stop": ["."]},
], ids=["system-prompt", "tools", "response-format", "max-tokens", "top-p", "seed", "stop"])
async def test_anything_that_changes_the_answer_never_hits(
    nats_server: NatsServer, tenants_file: Path, change: dict[str, Any]
) -> None:
    base = chat("What is the capital of Italy?", temperature=0, max_tokens=40)
    async with chat_stack(nats_server.url, tenants_file) as (_, client, _cache):
        await ask(client, base)
        assert outcome(await ask(client, base)) == "exact"
        changed = await client.post("/v1/chat/completions", json={**base, **change})
    assert changed.status_code in (200, 400), changed.text
    if changed.status_code == 200:
        assert outcome(changed) == "miss"


async def test_a_different_temperature_never_hits(nats_server: NatsServer, tenants_file: Path) -> None:
    async with chat_stack(nats_server.url, tenants_file) as (_, client, _cache):
        await ask(client, chat("What is the capital of Spain?", temperature=0))
        sampled = await ask(client, chat("What is the capital of Spain?", temperature=0.0001))
    assert outcome(sampled) == "miss"


async def test_a_reworded_question_is_a_semantic_hit_streamed_over_sse_and_websocket(
    nats_server: NatsServer, tenants_file: Path
) -> None:
    async with chat_stack(nats_server.url, tenants_file) as (ingress, client, _cache):
        stored = await ask(client, chat("What is the capital of France?", temperature=0))
        answer = stored.json()["choices"][0]["message"]["content"]
        plain = await ask(client, chat("What's the capital of France?", temperature=0))
        async with client.stream("POST", "/v1/chat/completions", json=chat(
                "what is the capital of france", temperature=0, stream=True,
                stream_options={"include_usage": True})) as s:
            sse_headers = s.headers
            events = [line[6:] async for line in s.aiter_lines() if line.startswith("data: ")]
        async with websockets.connect(f"ws://127.0.0.1:{ingress.port}/v1/ws", additional_headers=AUTH) as ws:
            await ws.send(json.dumps({"id": "w1", "request": chat("what is the capital of France ?",
                                                                 temperature=0)}))
            frames = [json.loads(await ws.recv()) for _ in range(2)]
    assert outcome(plain) == "semantic"
    assert 0.5 < float(plain.headers["x-skinflint-cache-similarity"]) < 1.0
    assert plain.json()["choices"][0]["message"]["content"] == answer
    assert sse_headers["x-skinflint-cache"] in ("semantic", "exact")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == answer
    assert chunks[-1]["usage"]["completion_tokens"] == 0  # no model tokens: a cached answer
    assert [f["type"] for f in frames] == ["chunk", "done"]
    assert frames[0]["delta"] == answer
    assert frames[1]["cache"]["outcome"] in ("semantic", "exact")


@pytest.mark.parametrize(("stored", "asked"), [
    ("Is Python a compiled language?", "Is Python not a compiled language?"),
    ("How many days are there in a week?", "How many days are there in a month?"),
    ("What was the population of Paris in 1990?", "What was the population of Paris in 2020?"),
    ("Convert 5 miles to kilometers.", "Convert 50 miles to kilometers."),
], ids=["negation", "week-month", "year", "number"])
async def test_negation_and_number_pairs_do_not_hit(
    nats_server: NatsServer, tenants_file: Path, stored: str, asked: str
) -> None:
    async with chat_stack(nats_server.url, tenants_file) as (_, client, _cache):
        await ask(client, chat(stored, temperature=0))
        assert outcome(await ask(client, chat(stored, temperature=0))) == "exact"
        r = await ask(client, chat(asked, temperature=0))
    assert outcome(r) == "miss"


async def test_multi_turn_keys_differ_when_earlier_turns_differ(nats_server: NatsServer, tenants_file: Path) -> None:
    def conversation(first: str) -> dict[str, Any]:
        return {"model": "smollm2-135m", "temperature": 0, "messages": [
            {"role": "user", "content": first}, {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": "And how tall is it?"}]}

    async with chat_stack(nats_server.url, tenants_file) as (_, client, _cache):
        await ask(client, conversation("Tell me about the Eiffel Tower."))
        same = await ask(client, conversation("Tell me about the Eiffel Tower."))
        other = await ask(client, conversation("Tell me about the Empire State Building."))
    assert (outcome(same), outcome(other)) == ("exact", "miss")


@pytest.mark.parametrize(("body", "reason"), [
    (chat("Truncate me", temperature=0, max_tokens=3), "truncated"),
    (chat("Sample me", temperature=0.8), "sampled"),
], ids=["truncated", "sampled"])
async def test_truncated_and_sampled_answers_are_not_stored(
    nats_server: NatsServer, tenants_file: Path, body: dict[str, Any], reason: str
) -> None:
    async with chat_stack(nats_server.url, tenants_file) as (_, client, _cache):
        before = stores_seen(reason)
        await ask(client, body, learnt=False)
        await until_declined(reason, before)
        again = await ask(client, body, learnt=False)
    assert outcome(again) == "miss"


async def test_a_failed_answer_is_not_stored(nats_server: NatsServer, tenants_file: Path) -> None:
    body = chat("Fail me", temperature=0)
    async with chat_stack(nats_server.url, tenants_file, engine=FakeEngine(fail_after=2)) as (_, client, cache):
        failed = await client.post("/v1/chat/completions", json=body)
        await asyncio.sleep(0.3)  # an error is never announced: give a wrong one time to arrive
        assert cache is not None and cache.logic is not None
        from services.ingress.gateway import parse_chat_request
        from services.shared.canonical import exact_key
        stored = await cache.logic.exact.get("demo", exact_key("demo", parse_chat_request(body)))
    assert failed.status_code == 500
    assert stored is None


async def test_a_cancelled_stream_is_not_stored(nats_server: NatsServer, tenants_file: Path) -> None:
    body = chat("Stream then leave", temperature=0, stream=True)
    async with chat_stack(nats_server.url, tenants_file, engine=FakeEngine(seconds_per_token=0.05)) as (
            _, client, _cache):
        async with client.stream("POST", "/v1/chat/completions", json=body) as s:
            async for line in s.aiter_lines():
                if '"content":"Paris"' in line.replace(" ", ""):
                    break  # leave after the first word
        await asyncio.sleep(1.0)  # the engine is told to stop; nothing whole is announced
        again = await ask(client, {**body, "stream": False}, learnt=False)
    assert outcome(again) == "miss"


async def test_cache_headers_skip_the_lookup_or_the_store_and_bound_the_age(
    nats_server: NatsServer, tenants_file: Path
) -> None:
    body = chat("How far is the Moon from the Earth?", temperature=0)
    async with chat_stack(nats_server.url, tenants_file) as (_, client, _cache):
        unstored = await ask(client, body, headers={"Cache-Control": "no-store"}, learnt=False)
        await asyncio.sleep(0.3)
        still_missing = await ask(client, body)  # now stored
        bypassed = await ask(client, body, headers={"Cache-Control": "no-cache"}, learnt=False)
        await asyncio.sleep(1.1)
        too_old = await ask(client, body, headers={"Cache-Control": "max-age=1"}, learnt=False)
        fresh_enough = await ask(client, body, headers={"Cache-Control": "max-age=3600"})
        bad = await client.post("/v1/chat/completions", json=body, headers={"Cache-Control": "max-age=soon"})
    assert outcome(unstored) == "miss" and outcome(still_missing) == "miss"
    assert outcome(bypassed) == "bypass"
    assert outcome(too_old) == "miss" and outcome(fresh_enough) == "exact"
    assert bad.status_code == 400 and "max-age" in bad.json()["error"]["message"]


async def test_purge_removes_a_tenants_entries_and_only_an_admin_may_purge_others(
    nats_server: NatsServer, tenants_file: Path
) -> None:
    body = chat("Who wrote Hamlet?", temperature=0)
    async with chat_stack(nats_server.url, tenants_file) as (_, client, _cache):
        await ask(client, body)
        await ask(client, body, headers=ACME)
        assert outcome(await ask(client, body)) == "exact"
        forbidden = await client.post("/v1/cache/purge", json={"tenant": "acme"})
        purged = await client.post("/v1/cache/purge", json={})
        demo_after = await ask(client, body, learnt=False)
        acme_after = await ask(client, body, headers=ACME, learnt=False)
        everything = await client.post("/v1/cache/purge", json={"all": True}, headers=ADMIN)
        acme_gone = await ask(client, body, headers=ACME, learnt=False)
    assert forbidden.status_code == 403 and forbidden.json()["error"]["param"] == "tenant"
    assert purged.status_code == 200, purged.text
    assert purged.json()["purged"] == {"tenant": "demo", "tag": None}
    assert outcome(demo_after) == "miss" and outcome(acme_after) == "exact"
    assert everything.status_code == 200 and outcome(acme_gone) == "miss"


async def test_a_tag_purge_removes_only_the_tagged_answers(nats_server: NatsServer, tenants_file: Path) -> None:
    tagged, untagged = chat("What is in version 3 of the guide?", temperature=0), chat("Hello there", temperature=0)
    async with chat_stack(nats_server.url, tenants_file) as (_, client, _cache):
        await ask(client, tagged, headers={"X-Skinflint-Cache-Tags": "kb:v3"})
        await ask(client, untagged)
        r = await client.post("/v1/cache/purge", json={"tag": "kb:v3"})
        after_tagged, after_untagged = await ask(client, tagged, learnt=False), await ask(client, untagged)
    assert r.status_code == 200, r.text
    assert (outcome(after_tagged), outcome(after_untagged)) == ("miss", "exact")


async def test_chat_keeps_answering_when_the_cache_stops_mid_run(
    nats_server: NatsServer, tenants_file: Path
) -> None:
    body = chat("Is the cache optional?", temperature=0)
    async with chat_stack(nats_server.url, tenants_file, with_cache=False) as (_, client, _), \
            running_cache(nats_server.url) as cache:
        await ask(client, body)
        assert outcome(await ask(client, body)) == "exact"
        await cache.drain()  # stops taking tasks, as a replica that is shutting down
        # Exact hits are read by ingress itself from the shared store: still served.
        repeat = await ask(client, body, learnt=False)
        started = time.monotonic()
        down = await ask(client, chat("Is the cache service optional?", temperature=0), learnt=False)
        took = time.monotonic() - started
    assert outcome(repeat) == "exact"
    assert outcome(down) == "skipped"
    assert down.json()["choices"][0]["message"]["content"]
    assert took < 2.0  # went on at once, no hop timeout
    events = await usage_events(nats_server.url)
    assert events[down.headers["x-request-id"]]["cache_outcome"] == "skipped"


async def test_shadow_mode_serves_nothing_and_records_what_it_would_have_served(
    nats_server: NatsServer, tenants_file: Path
) -> None:
    body = chat("What colour is the sky on a clear day?", temperature=0)
    async with chat_stack(nats_server.url, tenants_file) as (_, client, _cache):
        first = await ask(client, body, headers=SHADOW)
        second = await ask(client, body, headers=SHADOW)
    assert (outcome(first), outcome(second)) == ("miss", "miss")
    assert first.headers["x-skinflint-cache-shadow"] == "miss"
    assert second.headers["x-skinflint-cache-shadow"] == "exact"
    assert not second.headers["x-skinflint-served-by"].startswith("cache:")  # the model answered
    events = await usage_events(nats_server.url)
    shadowed = events[second.headers["x-request-id"]]
    assert (shadowed["cache_outcome"], shadowed["cache_shadow"], shadowed["cache_shadow_match"]) == \
        ("miss", "exact", True)
    assert shadowed["completion_tokens"] > 0  # charged as the model answer it was


async def test_a_cache_that_fails_passes_the_request_on_to_the_model(
    nats_server: NatsServer, tenants_file: Path
) -> None:
    async with chat_stack(nats_server.url, tenants_file) as (_, client, cache):
        assert cache is not None and cache.logic is not None

        assert cache.logic.index is not None

        def broken(*args: Any, **kwargs: Any) -> bool:
            raise ConnectionError("the semantic index is unreachable")

        cache.logic.index.may_hold = broken  # type: ignore[method-assign]
        r = await ask(client, chat("Does a failing cache fail the request?", temperature=0), learnt=False)
    assert outcome(r) == "skipped"
    assert r.json()["choices"][0]["message"]["content"]
    events = await usage_events(nats_server.url)
    assert events[r.headers["x-request-id"]]["cache_outcome"] == "skipped"
