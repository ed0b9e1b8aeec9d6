"""A bulk job's items carry the job into their usage events, whoever ends them (a worker that
answered, a stage that answered or refused first), so accounting can total the job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts.subjects import Priority
from contracts.v1 import ErrorReply, Final, TaskEnvelope
from services.shared.usage import answered_without_model
from services.worker import generation
from services.worker.backend import EngineBackend, WorkerIdentity
from tests.support.fakes import FakeEngine, ListSink

pytestmark = pytest.mark.unit
WHO = WorkerIdentity("w1", "small", "smollm2-135m", default_max_tokens=64)


EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "v1"


def envelope(job_id: str | None) -> TaskEnvelope:
    raw = json.loads((EXAMPLES / "task_envelope.json").read_text())
    raw["request"]["max_tokens"] = 2
    env = TaskEnvelope.model_validate(raw)
    if job_id is None:
        return env
    return env.model_copy(update={"priority": Priority.BULK, "job_id": job_id, "request_id": f"{job_id}-3"})


@pytest.mark.parametrize("job_id", ["batch_1", None])
async def test_the_workers_usage_event_names_the_job(job_id: str | None) -> None:
    sink = ListSink()
    await generation.answer(envelope(job_id), EngineBackend(FakeEngine()), sink, WHO)
    [event] = sink.usages
    assert (event.job_id, event.request_id == f"{job_id}-3") == (job_id, job_id is not None)
    assert event.priority is (Priority.BULK if job_id else Priority.INTERACTIVE)


@pytest.mark.parametrize("job_id", ["batch_1", None])
def test_a_task_answered_without_a_model_names_the_job(job_id: str | None) -> None:
    env = envelope(job_id)
    refused = ErrorReply(request_id=env.request_id, status=400, code="bad", message="no")
    answered = Final.model_validate_json((EXAMPLES / "reply_final.json").read_text())
    for reply in (refused, answered):
        assert answered_without_model(env, reply, "cache").job_id == job_id
