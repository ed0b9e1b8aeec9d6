"""Bulk tasks through the stages, as a batch item travels: cache, classifier, then the tier's JetStream
work queue (SF_BULK); the result, whoever answers (a worker or the cache), stored in SF_BULK_RESULTS
with a bulk usage event. Real nats-server, the real cache stores, embedder and routing policy; workers
on fake engines."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from contracts.subjects import (
    BULK_RESULTS_STREAM,
    BULK_STREAM,
    USAGE_STREAM,
    Priority,
    batch_result_subject,
)
from contracts.v1 import REPLY_ADAPTER, ErrorReply, Final, Route, TaskEnvelope
from services.shared.broker import Broker, ensure_streams
from services.shared.errors import Unavailable
from services.shared.slip import StageHop
from services.worker.backend import ENGINE_PRIORITY
from tests.integration.cache_chat import stores_seen
from tests.integration.conftest import FakeEngine, NatsServer, running_cache, running_classifier, running_worker
from tests.support.usage_stream import usage_events

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).resolve().parents[1] / "examples/v1/task_envelope.json"
TIERS = ("small", "large")


def bulk_item(batch: str, index: int, question: str = "What is the capital of France?",
              itinerary: tuple[str, ...] = ("cache", "classifier", "infer")) -> TaskEnvelope:
    """A batch item's task as the batch service builds it: routed ('auto'), bulk, its result
    stored under the batch's result subject."""
    raw = json.loads(EXAMPLE.read_text())
    raw.update(request_id=f"{batch}-{index}", priority="bulk", job_id=batch, marks=[], cache=None,
               query_embedding=None, itinerary=list(itinerary), optional=["cache", "classifier"],
               reply_subject=batch_result_subject(raw["tenant"], batch))
    raw["request"].update(stream=False, stream_options=None, max_tokens=40, model="auto")
    raw["request"]["messages"][-1]["content"] = question
    raw["route"] = Route(model="auto", tier="large", counterfactual_tier="large", routed=True).model_dump()
    return TaskEnvelope.model_validate(raw)


@pytest.fixture
def tiers(tmp_path: Path) -> Path:
    """small and large, both on fake engines; the shipped learned routing policy; small falls back
    to large (which a bulk task never takes)."""
    config = {"tiers": {"small": {"kind": "vllm", "model": "smollm2-135m", "fallback": "large"},
                        "large": {"kind": "vllm", "model": "big-model"}},
              "models": {"smollm2-135m": {"tier": "small"}, "big-model": {"tier": "large"}},
              "routing": {"weak": "small", "strong": "large", "default_tier": "large",
                          "policy": {"kind": "learned"}}}
    path = tmp_path / "tiers.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@asynccontextmanager
async def sender(nats_url: str, **hop: Any) -> AsyncIterator[tuple[StageHop, JetStreamContext]]:
    """What hands batch items on (the batch service): a broker, its hop, and JetStream to read with."""
    broker = Broker(servers=[nats_url])
    await broker.connect()
    try:
        yield StageHop(broker, **hop), broker.connection.jetstream()
    finally:
        await broker.stop()


async def stored(js: JetStreamContext, stream: str, subject: str) -> list[bytes]:
    """Every message ``stream`` holds on ``subject`` (an ephemeral consumer; nothing is removed)."""
    sub = await js.pull_subscribe(subject, stream=stream, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
    out: list[bytes] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(100, timeout=0.5)
            except TimeoutError:
                return out
            out.extend(m.data for m in msgs)
    finally:
        await sub.unsubscribe()


async def result_of(js: JetStreamContext, env: TaskEnvelope) -> Final | ErrorReply:
    """``env``'s result, once stored on its batch's result subject; exactly one is stored."""
    for _ in range(100):
        found = [r for r in (REPLY_ADAPTER.validate_json(b)
                             for b in await stored(js, BULK_RESULTS_STREAM.name, env.reply_subject))
                 if r.request_id == env.request_id]
        if found:
            assert len(found) == 1, found
            assert isinstance(found[0], Final | ErrorReply), found  # bulk results are stored whole
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"the result of {env.request_id} never arrived on {env.reply_subject}")


async def until_learnt(before: float) -> None:
    for _ in range(500):
        if stores_seen("ok") > before:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the cache never stored the worker's answer")


async def test_a_bulk_item_goes_through_the_stages_to_the_queue_and_its_repeats_are_cache_hits(
    fresh_nats_server: NatsServer, tiers: Path
) -> None:
    url = fresh_nats_server.url
    engines = {tier: FakeEngine() for tier in TIERS}
    first, again, reworded = (bulk_item("batch_a", 0), bulk_item("batch_a", 1),
                              bulk_item("batch_a", 2, "What's the capital of France?"))
    async with AsyncExitStack() as stack:
        for tier in TIERS:
            await stack.enter_async_context(running_worker(url, tier=tier, tiers_file=str(tiers),
                                                           engine=engines[tier]))
        cache = await stack.enter_async_context(running_cache(url))
        await stack.enter_async_context(running_classifier(url, tiers))
        hop, js = await stack.enter_async_context(sender(url))

        learnt = stores_seen("ok")
        ack, _ = await hop.deliver(first)
        assert (ack.accepted, ack.stage) == (True, "cache")
        answer = await result_of(js, first)
        await until_learnt(learnt)  # the worker announced its bulk answer; the cache stored it
        queued = (await js.stream_info(BULK_STREAM.name)).state.last_seq

        await hop.deliver(again)
        hit = await result_of(js, again)
        await hop.deliver(reworded)
        near = await result_of(js, reworded)
        requeued = (await js.stream_info(BULK_STREAM.name)).state.last_seq
    events = await usage_events(url)

    # The first went through SF_BULK to a worker of the tier the classifier picked, at bulk priority.
    assert isinstance(answer, Final) and answer.request_id == first.request_id
    assert answer.usage.completion_tokens > 0
    assert queued == 1
    event = events[first.request_id]
    assert (event["priority"], event["cache_outcome"], event["route_policy"]) == ("bulk", "miss", "learned")
    assert event["tier"] in TIERS and event["counterfactual_tier"] == "large"
    assert engines[event["tier"]].priorities == [ENGINE_PRIORITY[Priority.BULK]]
    # The repeats: answered by the cache stage, stored in SF_BULK_RESULTS, never queued for a worker.
    assert isinstance(hit, Final) and isinstance(near, Final)
    assert hit.text == near.text == answer.text
    assert requeued == 1
    assert sum(len(e.priorities) for e in engines.values()) == 1
    for item, kind in ((again, "exact"), (reworded, "semantic")):
        charged = events[item.request_id]
        assert (charged["priority"], charged["cache_outcome"], charged["completion_tokens"]) == ("bulk", kind, 0)
        assert charged["worker"] == cache.settings.instance_id


async def test_a_bulk_hand_off_is_stored_once_and_a_stage_that_cannot_queue_it_stores_an_error(
    fresh_nats_server: NatsServer,
) -> None:
    url = fresh_nats_server.url
    item = bulk_item("batch_b", 0, itinerary=("infer",))
    via_cache = bulk_item("batch_b", 1, itinerary=("cache", "infer"))
    async with AsyncExitStack() as stack:
        hop, js = await stack.enter_async_context(sender(url, fallbacks={"large": "small"}))
        broker = Broker(servers=[url])
        await broker.connect()
        stack.push_async_callback(broker.stop)
        # No SF_BULK yet: the hand-off fails, and never goes to the tier's fallback instead.
        await ensure_streams(broker, (USAGE_STREAM, BULK_RESULTS_STREAM))
        with pytest.raises(Unavailable, match=BULK_STREAM.name):
            await hop.deliver(item)
        # A stage whose hand-off fails says so on the result subject (a "not now": under an id of its
        # own, so the item's real result later is no duplicate) and charges nothing: no usage event.
        await stack.enter_async_context(running_cache(url))
        await hop.deliver(via_cache)
        error = await result_of(js, via_cache)

        await ensure_streams(broker, (BULK_STREAM,))
        acks = [(await hop.deliver(item))[0] for _ in range(2)]
        state = (await js.stream_info(BULK_STREAM.name)).state
        [queued] = await stored(js, BULK_STREAM.name, "sf.v1.infer.large.bulk")
    assert [(a.accepted, a.stage, a.instance, a.holds) for a in acks] == [(True, "infer", "jetstream", False)] * 2
    assert (state.messages, state.last_seq) == (1, 1)
    assert TaskEnvelope.model_validate_json(queued).request_id == item.request_id
    assert isinstance(error, ErrorReply) and error.status == 503 and BULK_STREAM.name in error.message
    assert via_cache.request_id not in await usage_events(url)
