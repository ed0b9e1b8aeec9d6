"""The routing slip's plain logic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts.subjects import Priority
from contracts.v1 import TaskEnvelope
from services.shared.slip import advance, current_stage, insert_next, skip, subject_for

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
