"""The batch job's state machine: OpenAI's statuses and fields, counts that never double count."""

from __future__ import annotations

import pytest
from openai.types import Batch, FileObject

from contracts.v1 import TokenUsage
from services.batch.files import (
    FilePurpose,
    StoredFile,
    check_upload_purpose,
    new_file_id,
    output_expiry,
)
from services.batch.job import (
    BatchJob,
    BatchStatus,
    FileError,
    WrongState,
    check_metadata,
    parse_window,
)
from services.shared.errors import BadRequest

pytestmark = pytest.mark.unit
T0 = 1_764_000_000
USAGE = TokenUsage(prompt_tokens=10, cached_prompt_tokens=4, completion_tokens=3)


def job(total: int | None = None, **kw: object) -> BatchJob:
    j = BatchJob.create(tenant="acme", input_file_id="file-in", now=T0, **kw)  # type: ignore[arg-type]
    if total is not None:
        j.start(T0 + 1, total)
    return j


def openai_view(j: BatchJob) -> Batch:
    batch = Batch.model_validate(j.to_openai())
    assert batch.status == j.status.value
    return batch


def test_a_new_job_is_validating_with_openais_fields() -> None:
    j = job(metadata={"project": "x"})
    b = openai_view(j)
    assert b.id.startswith("batch_") and b.object == "batch" and b.endpoint == "/v1/chat/completions"
    assert (b.created_at, b.expires_at, b.completion_window) == (T0, T0 + 24 * 3600, "24h")
    assert b.metadata == {"project": "x"} and b.errors is None and b.output_file_id is None
    assert b.request_counts is not None and b.request_counts.total == 0


def test_the_happy_path_through_finalizing_to_completed() -> None:
    j = job(3)
    assert j.status == BatchStatus.IN_PROGRESS and openai_view(j).in_progress_at == T0 + 1
    assert j.record(0, True, T0 + 2, USAGE) and j.record(1, False, T0 + 3)
    assert j.status == BatchStatus.IN_PROGRESS
    assert j.record(2, True, T0 + 4, USAGE)
    assert j.status == BatchStatus.FINALIZING and j.finalizing_at == T0 + 4
    j.complete(T0 + 5, "file-out", "file-err")
    b = openai_view(j)
    assert (b.status, b.completed_at) == ("completed", T0 + 5)
    assert (b.output_file_id, b.error_file_id) == ("file-out", "file-err")
    assert b.request_counts is not None
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (3, 2, 1)
    assert b.usage is not None
    assert (b.usage.input_tokens, b.usage.input_tokens_details.cached_tokens, b.usage.output_tokens,
            b.usage.total_tokens) == (20, 8, 6, 26)


def test_a_redelivered_result_counts_once_and_keeps_its_first_outcome() -> None:
    j = job(2)
    assert j.record(0, True, T0 + 2, USAGE)
    assert not j.record(0, True, T0 + 3, USAGE)
    assert not j.record(0, False, T0 + 3)
    assert (len(j.completed), len(j.failed), j.usage.output_tokens) == (1, 0, 3)
    assert j.status == BatchStatus.IN_PROGRESS


def test_counts_survive_a_store_and_reload_and_stay_idempotent() -> None:
    j = job(2)
    j.record(0, True, T0 + 2, USAGE)
    again = BatchJob.model_validate_json(j.model_dump_json())
    assert again == j
    assert not again.record(0, True, T0 + 3, USAGE)
    assert again.record(1, True, T0 + 3, USAGE) and again.status == BatchStatus.FINALIZING


def test_an_item_outside_the_job_is_a_bug_not_a_count() -> None:
    j = job(2)
    with pytest.raises(ValueError):
        j.record(2, True, T0 + 2)
    with pytest.raises(ValueError):
        j.record(-1, True, T0 + 2)


def test_lines_refused_on_reading_count_as_failed_but_not_in_throughput() -> None:
    j = job(4)
    assert j.record_unread(1, T0 + 1) and not j.record_unread(1, T0 + 1)
    j.record(0, True, T0 + 3)
    p = j.progress(T0 + 11)
    assert (p.completed, p.failed, p.pending) == (1, 1, 2)
    assert p.per_second == pytest.approx(1 / 10)
    assert p.eta_s == pytest.approx(20)


def test_eta_is_unknown_until_something_ran_and_zero_once_over() -> None:
    j = job(2)
    assert j.progress(T0 + 5).eta_s is None and j.progress(T0 + 5).per_second is None
    assert job().progress(T0).elapsed_s == 0.0
    j.record(0, True, T0 + 3)
    j.record(1, True, T0 + 5)
    p = j.progress(T0 + 100)  # the clock stops at finalizing
    assert (p.eta_s, p.elapsed_s, p.per_second) == (0.0, 4.0, 0.5)


def test_validation_failure_lists_the_file_errors() -> None:
    j = job()
    j.fail(T0 + 1, [FileError(code="empty_file", message="the file holds no requests")])
    b = openai_view(j)
    assert b.failed_at == T0 + 1 and b.errors is not None and b.errors.object == "list"
    assert b.errors.data is not None and b.errors.data[0].code == "empty_file"
    with pytest.raises(WrongState):
        j.start(T0 + 2, 3)


def test_cancelling_keeps_finished_items_and_fails_the_pending_ones() -> None:
    j = job(4)
    j.record(0, True, T0 + 2, USAGE)
    j.cancel(T0 + 3)
    j.cancel(T0 + 4)  # twice is harmless
    assert j.status == BatchStatus.CANCELLING and j.cancelling_at == T0 + 3
    assert j.record(1, False, T0 + 4)  # was already running: its result still counts
    assert j.pending() == [2, 3]
    assert j.progress(T0 + 4).eta_s is None
    j.finish_cancel(T0 + 5, "file-out", "file-err")
    b = openai_view(j)
    assert (b.status, b.cancelled_at) == ("cancelled", T0 + 5)
    assert b.request_counts is not None and (b.request_counts.completed, b.request_counts.failed) == (1, 3)
    assert j.unrun == {2, 3} and j.pending() == []
    assert not j.record(2, True, T0 + 6)  # too late: it is in the error file as cancelled
    with pytest.raises(WrongState):
        j.cancel(T0 + 7)


def test_a_validating_job_can_be_cancelled() -> None:
    j = job()
    j.cancel(T0 + 1)
    j.finish_cancel(T0 + 2, None, None)
    assert openai_view(j).status == "cancelled"


@pytest.mark.parametrize("state", ["finalizing", "completed", "failed"])
def test_a_finishing_or_finished_job_cannot_be_cancelled(state: str) -> None:
    j = job(1)
    j.record(0, True, T0 + 2)
    if state == "completed":
        j.complete(T0 + 3, "file-out", None)
    if state == "failed":
        j = job()
        j.fail(T0 + 1, [])
    with pytest.raises(WrongState) as info:
        j.cancel(T0 + 4)
    assert info.value.status == 409 and state in info.value.message
    assert j.status == state


def test_expiry_keeps_what_finished_and_ignores_later_results() -> None:
    j = job(3, completion_window="1h")
    j.record(0, True, T0 + 10)
    assert not j.due(T0 + 3599) and j.due(T0 + 3600)
    with pytest.raises(WrongState):
        j.expire(T0 + 3599, None, None)
    j.expire(T0 + 3600, "file-out", "file-err")
    b = openai_view(j)
    assert (b.status, b.expired_at) == ("expired", T0 + 3600)
    assert b.request_counts is not None and (b.request_counts.completed, b.request_counts.failed) == (1, 2)
    assert not j.record(1, True, T0 + 3700)
    assert not j.due(T0 + 9999)


def test_completing_needs_finalizing() -> None:
    j = job(2)
    j.record(0, True, T0 + 2)
    with pytest.raises(WrongState):
        j.complete(T0 + 3, None, None)
    with pytest.raises(WrongState):
        j.finish_cancel(T0 + 3, None, None)


def _step(j: BatchJob, step: str) -> None:
    if step == "start":
        j.start(T0 + 1, 2)
    elif step == "done":
        j.record(0, True, T0 + 2, USAGE)
        j.record(1, False, T0 + 3)
    elif step == "complete":
        j.complete(T0 + 4, "file-o", "file-e")
    elif step == "fail":
        j.fail(T0 + 1, [FileError(code="too_many_tasks", message="m")])
    elif step == "cancel":
        j.cancel(T0 + 2)
    elif step == "finish_cancel":
        j.finish_cancel(T0 + 3, None, "file-e")
    else:
        j.expire(T0 + 7200, None, "file-e")


def test_every_status_is_a_valid_openai_batch() -> None:
    seen = set()
    for steps in ([], ["start"], ["start", "done"], ["start", "done", "complete"], ["fail"], ["start", "cancel"],
                  ["start", "cancel", "finish_cancel"], ["start", "expire"]):
        j = job(completion_window="2h", metadata={"k": "v"})
        for step in steps:
            _step(j, step)
        seen.add(openai_view(j).status)
    assert seen == {s.value for s in BatchStatus}


@pytest.mark.parametrize(("window", "seconds"), [("24h", 86400), ("1h", 3600), ("168h", 168 * 3600)])
def test_completion_windows_accepted(window: str, seconds: int) -> None:
    assert parse_window(window) == seconds


@pytest.mark.parametrize("window", ["24", "0h", "169h", "1d", "24h ", 24, None, "-1h"])
def test_completion_windows_refused_name_the_field(window: object) -> None:
    with pytest.raises(BadRequest) as info:
        job(completion_window=window)
    assert info.value.param == "completion_window"


def test_only_chat_completions_batches() -> None:
    with pytest.raises(BadRequest) as info:
        job(endpoint="/v1/embeddings")
    assert info.value.param == "endpoint"


@pytest.mark.parametrize(("metadata", "param"), [
    ({f"k{i}": "v" for i in range(17)}, "metadata"),
    ({"k" * 65: "v"}, "metadata"),
    ({"k": "v" * 513}, "metadata.k"),
    ({"k": 1}, "metadata.k"),
    (["k"], "metadata"),
])
def test_metadata_limits_are_openais(metadata: object, param: str) -> None:
    with pytest.raises(BadRequest) as info:
        check_metadata(metadata)
    assert info.value.param == param


def test_metadata_at_the_limits_is_accepted() -> None:
    full = {f"{i:064d}": "v" * 512 for i in range(16)}
    assert check_metadata(full) == full and check_metadata(None) == {}


@pytest.mark.parametrize("purpose", [FilePurpose.BATCH, FilePurpose.BATCH_OUTPUT])
def test_a_stored_file_is_a_valid_openai_file_object(purpose: FilePurpose) -> None:
    f = StoredFile(tenant="acme", filename="in.jsonl", purpose=purpose, bytes=123, created_at=T0,
                   expires_at=T0 + 60)
    obj = FileObject.model_validate(f.to_openai())
    assert obj.id.startswith("file-") and obj.object == "file" and obj.purpose == purpose.value
    assert (obj.bytes, obj.created_at, obj.expires_at, obj.filename) == (123, T0, T0 + 60, "in.jsonl")
    assert not f.expired(T0 + 59) and f.expired(T0 + 60)
    assert new_file_id() != new_file_id()


def test_uploads_are_batch_input_files_only() -> None:
    assert check_upload_purpose("batch") == FilePurpose.BATCH
    with pytest.raises(BadRequest) as info:
        check_upload_purpose("fine-tune")
    assert info.value.param == "purpose"


def test_output_expiry_follows_openais_output_expires_after() -> None:
    assert output_expiry(T0, None, default_s=86400) == T0 + 86400
    assert output_expiry(T0, {"anchor": "created_at", "seconds": 3600}, default_s=1) == T0 + 3600
    for bad, param in (({"anchor": "created_at", "seconds": 3599}, "output_expires_after.seconds"),
                       ({"anchor": "created_at", "seconds": True}, "output_expires_after.seconds"),
                       ({"anchor": "now", "seconds": 7200}, "output_expires_after.anchor")):
        with pytest.raises(BadRequest) as info:
            output_expiry(T0, bad, default_s=1)
        assert info.value.param == param
