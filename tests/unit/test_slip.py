"""The routing slip's plain logic."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from faststream.nats import NatsBroker
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import PubAck
from nats.js.errors import NoStreamResponseError

from contracts.subjects import Priority
from contracts.v1 import HopAck, TaskEnvelope
from services.shared.errors import Unavailable
from services.shared.slip import StageHop, advance, current_stage, insert_next, skip, subject_for

pytestmark = pytest.mark.unit


@pytest.fixture
def env() -> TaskEnvelope:
    raw = json.loads((Path(__file__).resolve().parent.parent / "examples/v1/task_envelope.json").read_text())
    return TaskEnvelope.model_validate(raw).model_copy(update={"itinerary": ["cache", "infer"]})


def test_subject_follows_the_head_of_the_itinerary(env: TaskEnvelope) -> None:
    assert subject_for(env) == "sf.v1.stage.cache"
    nxt = advance(env)
    assert current_stage(nxt) == "infer"
    assert subject_for(nxt) == "sf.v1.infer.small.interactive"
    bulk = nxt.model_copy(update={"priority": Priority.BULK})
    assert subject_for(bulk) == "sf.v1.infer.small.bulk"


def test_advance_does_not_mutate_the_original(env: TaskEnvelope) -> None:
    advance(env)
    assert env.itinerary == ["cache", "infer"]


def test_insert_and_skip_touch_only_later_stages(env: TaskEnvelope) -> None:
    inserted = insert_next(env, "retrieval", "rerank")
    assert inserted.itinerary == ["cache", "retrieval", "rerank", "infer"]
    assert skip(inserted, "infer").itinerary == ["cache", "retrieval", "rerank"]
    # The current stage is never skipped by itself.
    assert skip(env, "cache").itinerary == ["cache", "infer"]


def test_an_empty_itinerary_has_no_subject(env: TaskEnvelope) -> None:
    done = advance(advance(env))
    assert current_stage(done) is None
    with pytest.raises(ValueError, match="empty itinerary"):
        subject_for(done)


# --- StageHop: the hand-off of a bulk task to inference goes to JetStream ----------------------------


class FakeJetStream:
    """Records JetStream publishes; answers with a PubAck, or raises ``fail``."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.published: list[tuple[str, TaskEnvelope, str | None, dict[str, str]]] = []

    async def publish(self, subject: str, payload: bytes, timeout: float | None = None, stream: str | None = None,
                      headers: dict[str, str] | None = None) -> PubAck:
        self.published.append((subject, TaskEnvelope.model_validate_json(payload), stream, dict(headers or {})))
        if self.fail is not None:
            raise self.fail
        return PubAck(stream=stream or "", seq=len(self.published), duplicate=len(self.published) > 1)


class FakeConnection:
    """A NATS connection whose core requests are answered by ``HopAck(accepted=True)`` from ``instance``."""

    def __init__(self, js: FakeJetStream) -> None:
        self.js = js
        self.requests: list[str] = []

    def jetstream(self) -> FakeJetStream:
        return self.js

    async def request(self, subject: str, payload: bytes, timeout: float, headers: object = None) -> SimpleNamespace:
        self.requests.append(subject)
        stage = TaskEnvelope.model_validate_json(payload).itinerary[0]
        return SimpleNamespace(data=HopAck(accepted=True, stage=stage, instance="replica-1").model_dump_json().encode())


def hop_on(js: FakeJetStream, **options: Any) -> tuple[StageHop, FakeConnection]:
    connection = FakeConnection(js)
    return StageHop(cast(NatsBroker, SimpleNamespace(connection=connection)), **options), connection


def bulk(env: TaskEnvelope, itinerary: list[str]) -> TaskEnvelope:
    return env.model_copy(update={"priority": Priority.BULK, "itinerary": itinerary})


async def test_a_bulk_task_for_inference_is_stored_in_its_tiers_work_queue(env: TaskEnvelope) -> None:
    js = FakeJetStream()
    hop, connection = hop_on(js, ack_timeout_s=2.5)
    task = bulk(env, ["infer"])
    ack, delivered = await hop.deliver(task)
    assert (ack.accepted, ack.stage, ack.instance, ack.holds) == (True, "infer", "jetstream", False)
    assert delivered is task
    [(subject, sent, stream, headers)] = js.published
    assert (subject, stream) == ("sf.v1.infer.small.bulk", "SF_BULK")
    assert headers["Nats-Msg-Id"] == task.request_id
    assert sent == task
    assert connection.requests == []  # no core request: a stream answers those with a PubAck


async def test_a_repeated_bulk_hand_off_carries_the_same_message_id(env: TaskEnvelope) -> None:
    js = FakeJetStream()
    hop, _ = hop_on(js)
    task = bulk(env, ["infer"])
    await hop.send(task)
    again = await hop.send(task)  # the stream stores it once (its duplicate window)
    assert again.accepted
    assert [h["Nats-Msg-Id"] for _, _, _, h in js.published] == [task.request_id] * 2


async def test_a_bulk_task_that_cannot_be_queued_is_unavailable_without_a_tier_fallback(env: TaskEnvelope) -> None:
    js = FakeJetStream(fail=NoStreamResponseError())
    hop, connection = hop_on(js, fallbacks={"small": "large"})
    with pytest.raises(Unavailable, match="SF_BULK"):
        await hop.deliver(bulk(env, ["infer"]))
    assert [subject for subject, *_ in js.published] == ["sf.v1.infer.small.bulk"]
    assert connection.requests == []


async def test_a_puback_timeout_is_unavailable_too(env: TaskEnvelope) -> None:
    hop, _ = hop_on(FakeJetStream(fail=NatsTimeoutError()))
    with pytest.raises(Unavailable, match="could not be queued"):
        await hop.send(bulk(env, ["infer"]))


async def test_bulk_tasks_reach_the_other_stages_and_chat_reaches_workers_by_request(env: TaskEnvelope) -> None:
    js = FakeJetStream()
    hop, connection = hop_on(js)
    ack = await hop.send(bulk(env, ["cache", "infer"]))
    assert (ack.stage, ack.instance) == ("cache", "replica-1")
    ack = await hop.send(env.model_copy(update={"itinerary": ["infer"]}))
    assert (ack.stage, ack.instance) == ("infer", "replica-1")
    assert connection.requests == ["sf.v1.stage.cache", "sf.v1.infer.small.interactive"]
    assert js.published == []
