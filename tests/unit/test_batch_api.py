"""The Batch API's request checks and response shapes, without a server."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types import Batch
from starlette.datastructures import FormData, UploadFile

from services.batch.job import BatchJob, BatchStatus
from services.ingress.batch_api import after_cursor, batch_object, list_page, new_job, upload_expiry
from services.shared.errors import BadRequest

NOW = 1_800_000_000.0
GOOD = {"input_file_id": "file-abc", "endpoint": "/v1/chat/completions", "completion_window": "24h"}


def test_a_good_body_makes_a_validating_job() -> None:
    job = new_job("acme", {**GOOD, "metadata": {"k": "v"}}, NOW, 168)
    assert (job.tenant, job.input_file_id, job.status, job.metadata) == ("acme", "file-abc", BatchStatus.VALIDATING,
                                                                         {"k": "v"})
    assert job.expires_at == int(NOW) + 24 * 3600
    assert job.output_expires_after_s is None and job.api_key_id == ""
    longer = new_job("acme", {**GOOD, "completion_window": "72h",
                              "output_expires_after": {"anchor": "created_at", "seconds": 7200}}, NOW, 168, "acme-dev")
    assert longer.expires_at == int(NOW) + 72 * 3600
    assert longer.output_expires_after_s == 7200 and longer.api_key_id == "acme-dev"


@pytest.mark.parametrize(("body", "param"), [
    ({k: v for k, v in GOOD.items() if k != "endpoint"}, "endpoint"),
    ({**GOOD, "input_file_id": ""}, "input_file_id"),
    ({**GOOD, "input_file_id": None}, "input_file_id"),
    ({**GOOD, "completion_window": "48h"}, "completion_window"),  # over the configured 24
    ({**GOOD, "metadata": ["a"]}, "metadata"),
    ({**GOOD, "output_expires_after": {"anchor": "now", "seconds": 3600}}, "output_expires_after.anchor"),
    ({**GOOD, "model": "x"}, "model"),
    ("a string", None),
])
def test_a_bad_body_is_a_400_naming_the_field(body: Any, param: str | None) -> None:
    with pytest.raises(BadRequest) as bad:
        new_job("acme", body, NOW, 24)
    assert bad.value.param == param


def test_upload_expiry_takes_both_fields_or_neither() -> None:
    assert upload_expiry(FormData([]), 100) is None
    assert upload_expiry(FormData([("expires_after[anchor]", "created_at"), ("expires_after[seconds]", "3600")]),
                         100) == 3700
    cases: list[tuple[list[tuple[str, str | UploadFile]], str]] = [
        ([("expires_after[seconds]", "3600")], "expires_after[anchor]"),
        ([("expires_after[anchor]", "created_at")], "expires_after[seconds]"),
        ([("expires_after[anchor]", "created_at"), ("expires_after[seconds]", "-5")], "expires_after[seconds]"),
        ([("expires_after[anchor]", "created_at"), ("expires_after[seconds]", "2592001")],
          "expires_after[seconds]")]
    for fields, param in cases:
        with pytest.raises(BadRequest) as bad:
            upload_expiry(FormData(fields), 100)
        assert bad.value.param == param


def test_pages_and_cursors() -> None:
    jobs = [BatchJob.create(tenant="t", input_file_id="f", now=NOW, batch_id=f"batch_{i}") for i in range(3)]
    assert after_cursor(jobs, None, "batches") == jobs
    assert after_cursor(jobs, "batch_0", "batches") == jobs[1:]
    with pytest.raises(BadRequest) as bad:
        after_cursor(jobs, "batch_9", "batches")
    assert bad.value.param == "after"
    page = list_page([{"id": "a"}, {"id": "b"}, {"id": "c"}], 2, True)
    assert page == {"object": "list", "data": [{"id": "a"}, {"id": "b"}], "first_id": "a", "last_id": "b",
                    "has_more": True}
    assert list_page([], 5, False) == {"object": "list", "data": [], "first_id": None, "last_id": None,
                                       "has_more": False}


def test_the_batch_object_carries_progress_and_still_parses_as_openais() -> None:
    job = BatchJob.create(tenant="t", input_file_id="f", now=NOW)
    job.start(NOW, 4)
    job.record(0, True, NOW + 2)
    body = batch_object(job, NOW + 2)
    assert body["skinflint"] == {"progress": {"pending": 3, "per_second": 0.5, "eta_s": 6.0, "elapsed_s": 2.0}}
    parsed = Batch.model_validate(body)
    assert parsed.status == "in_progress" and parsed.request_counts is not None
    assert parsed.request_counts.completed == 1
