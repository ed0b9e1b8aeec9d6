"""The cache's fast paths on the real request path: the semantic lookup overlapped with the
model's start (the worker holds its answer until the stage's verdict), and exact hits answered by
ingress itself."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from services.shared import metrics
from tests.integration.cache_chat import ACME, ask, chat_stack, counted, outcome
from tests.integration.conftest import (
    FakeEngine,
    NatsServer,
    chat,
    running_cache,
    running_ingress,
    running_worker,
)
from tests.support.usage_stream import usage_events

pytestmark = pytest.mark.integration


# --- overlap: the model starts on an exact miss while the semantic lookup decides ---------------

@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_a_semantic_hit_decided_while_the_model_answers_drops_the_models_answer(
    nats_server: NatsServer, tenants_file: Path, stream: bool
) -> None:
    engine = FakeEngine(seconds_per_token=0.05)  # still answering when the verdict comes
    async with chat_stack(nats_server.url, tenants_file, engine=engine) as (_, client, _cache):
        stored = await ask(client, chat("What is the capital of France?", temperature=0))
        answer = stored.json()["choices"][0]["message"]["content"]
        overlaps, served = counted(metrics.CACHE_OVERLAPS), counted(metrics.CACHE_VERDICTS, verdict="served")
        body = chat("What's the capital of France?", temperature=0, stream=stream)
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            headers = r.headers
            raw = (await r.aread()).decode()
    if stream:
        events = [json.loads(line[6:]) for line in raw.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    else:
        text = json.loads(raw)["choices"][0]["message"]["content"]
    assert headers["x-skinflint-cache"] == "semantic" and text == answer  # nothing of the model's mixed in
    assert counted(metrics.CACHE_OVERLAPS) == overlaps + 1
    assert counted(metrics.CACHE_VERDICTS, verdict="served") == served + 1
    request_id = headers["x-request-id"]
    assert request_id in engine.aborted  # the model's work stopped, unsent
    event = (await usage_events(nats_server.url))[request_id]
    assert (event["cache_outcome"], event["prompt_tokens"], event["completion_tokens"]) == ("semantic", 0, 0)


async def test_a_miss_decided_while_the_model_answers_is_answered_noted_and_learnt(
    nats_server: NatsServer, tenants_file: Path
) -> None:
    async with chat_stack(nats_server.url, tenants_file) as (_, client, _cache):
        await ask(client, chat("How tall is Mount Everest?", temperature=0))  # the partition holds one
        released = counted(metrics.CACHE_VERDICTS, verdict="released")
        miss = await ask(client, chat("Who wrote the novel Don Quixote?", temperature=0))
        reworded = await ask(client, chat("Who was the author of the novel Don Quixote?", temperature=0))
        async with client.stream("POST", "/v1/chat/completions", json=chat(
                "Who composed the opera Carmen?", temperature=0, stream=True)) as s:
            streamed_headers = s.headers
            streamed = [line async for line in s.aiter_lines() if line.startswith("data: ")]
    assert outcome(miss) == "miss" and not miss.headers["x-skinflint-served-by"].startswith("cache:")
    # Streaming: the note the verdict brought reaches the response's headers before the text.
    assert streamed_headers["x-skinflint-cache"] == "miss" and streamed[-1] == "data: [DONE]" and len(streamed) > 2
    assert counted(metrics.CACHE_VERDICTS, verdict="released") == released + 2  # the two misses
    # Learnt with the embedding the verdict carried to the worker: a rewording now hits.
    assert outcome(reworded) == "semantic"
    assert reworded.json()["choices"][0]["message"]["content"] == miss.json()["choices"][0]["message"]["content"]
    event = (await usage_events(nats_server.url))[miss.headers["x-request-id"]]
    assert event["cache_outcome"] == "miss" and event["completion_tokens"] > 0


async def test_a_verdict_that_never_comes_in_time_lets_the_model_answer_with_the_cache_skipped(
    nats_server: NatsServer, tenants_file: Path
) -> None:
    async with running_cache(nats_server.url) as cache, \
            running_worker(nats_server.url, cache_verdict_timeout_s=0.2), \
            running_ingress(nats_server.url, tenants_file=str(tenants_file),
                            pipeline=["cache", "infer"]) as (_, client):
        await ask(client, chat("How tall is Mount Everest?", temperature=0))
        assert cache.logic is not None
        decide = cache.logic._semantic

        async def slow(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(1.0)  # a replica stalled past the worker's wait
            return await decide(*args, **kwargs)

        cache.logic._semantic = slow  # type: ignore[method-assign]
        started = time.monotonic()
        r = await ask(client, chat("Who painted the Mona Lisa?", temperature=0), learnt=False)
        took = time.monotonic() - started
    assert outcome(r) == "skipped" and r.json()["choices"][0]["message"]["content"]
    assert took < 1.0  # the worker's wait, not the stalled lookup
    event = (await usage_events(nats_server.url))[r.headers["x-request-id"]]
    assert event["cache_outcome"] == "skipped" and event["completion_tokens"] > 0


# --- exact hits answered by ingress itself --------------------------------------------------------

@pytest.mark.parametrize("at_ingress", [True, False], ids=["ingress", "stage"])
async def test_an_exact_hit_is_answered_by_ingress_or_by_the_stage_alike(
    nats_server: NatsServer, tenants_file: Path, at_ingress: bool
) -> None:
    body = chat("Which river flows through Vienna?", temperature=0)
    async with running_cache(nats_server.url) as cache, running_worker(nats_server.url), \
            running_ingress(nats_server.url, tenants_file=str(tenants_file), pipeline=["cache", "infer"],
                            exact_cache_at_ingress=at_ingress) as (ingress, client):
        first = await ask(client, body)
        hit = await ask(client, body)
        fresh = await ask(client, chat("Which river flows through Budapest?", temperature=0), learnt=False)
    answered_by = ingress.settings.instance_id if at_ingress else cache.settings.instance_id
    assert outcome(hit) == "exact" and hit.headers["x-skinflint-served-by"] == f"cache:{answered_by}"
    assert hit.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    assert outcome(fresh) == "miss"  # a miss goes on to the stage and the model either way
    event = (await usage_events(nats_server.url))[hit.headers["x-request-id"]]
    assert (event["cache_outcome"], event["prompt_tokens"], event["completion_tokens"]) == ("exact", 0, 0)
    assert event["cache_source_completion_tokens"] == first.json()["usage"]["completion_tokens"]
    assert event["worker"] == (f"cache:{answered_by}" if at_ingress else answered_by)


async def test_ingress_never_answers_what_the_tenant_or_request_keeps_from_the_cache(
    nats_server: NatsServer, tenants_file: Path
) -> None:
    body = chat("What colour are polar bears?", temperature=0)
    async with chat_stack(nats_server.url, tenants_file) as (_, client, _cache):
        await ask(client, body)
        assert outcome(await ask(client, body)) == "exact"
        no_cache = await ask(client, body, headers={"Cache-Control": "no-cache"}, learnt=False)
        other_tenant = await ask(client, body, headers=ACME, learnt=False)
    assert outcome(no_cache) == "bypass" and not no_cache.headers["x-skinflint-served-by"].startswith("cache:")
    assert outcome(other_tenant) == "miss"


async def test_a_semantic_hit_is_served_while_no_worker_takes_the_task(
    nats_server: NatsServer, tenants_file: Path
) -> None:
    async with running_cache(nats_server.url), \
            running_ingress(nats_server.url, tenants_file=str(tenants_file),
                            pipeline=["cache", "infer"]) as (_, client):
        async with running_worker(nats_server.url):
            stored = await ask(client, chat("What is the tallest mountain in Africa?", temperature=0))
        # No worker runs now: the hand-off to inference fails, the match found meanwhile still serves.
        reworded = await ask(client, chat("what is the tallest mountain in Africa", temperature=0), learnt=False)
        fresh = await client.post("/v1/chat/completions", json=chat("How deep is Lake Baikal?", temperature=0))
    assert outcome(reworded) == "semantic"
    assert reworded.json()["choices"][0]["message"]["content"] == stored.json()["choices"][0]["message"]["content"]
    assert fresh.status_code == 503  # a miss still needs a worker
