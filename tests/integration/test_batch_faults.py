"""Batch jobs through faults (issue 14): every part a real process started as a user starts it
(nats-server, accounting, the batch service, a fake-engine worker, ingress), a job submitted with
the ``openai`` SDK, one process killed mid-job and started again by the stack's supervisor.

Whatever fails, the job ends ``completed`` with every line answered exactly once in its output
file, and the ledger holds exactly one charge per item, at bulk priority with the batch discount.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.batch import batch_line
from tests.support.batch_stack import BatchStack, bulk_charge, pricebook

pytestmark = pytest.mark.integration

#: Items per job: with 7 bulk slots at 8 tokens of 50 ms, a job runs for about ten seconds.
ITEMS = 150
#: Items answered before the fault: the rest are queued or in flight when it strikes.
BEFORE_FAULT = 12


@pytest.fixture
def bs(tmp_path: Path) -> Iterator[BatchStack]:
    stack = BatchStack.start(tmp_path / "stack")
    try:
        yield stack
    finally:
        stack.stop()


def job_lines(n: int = ITEMS) -> list[bytes]:
    return [json.dumps(batch_line(f"item-{i}", f"question number {i}", max_tokens=8)).encode() for i in range(n)]


def custom_ids(n: int = ITEMS) -> list[str]:
    return [f"item-{i}" for i in range(n)]


def start_job(bs: BatchStack) -> str:
    """Submit a job and wait until part of it is answered, with most of it still to run and
    some of it running."""
    batch = bs.submit(job_lines())
    bs.wait_completed_items(batch.id, BEFORE_FAULT)
    bs.wait_busy()
    counts = bs.retrieve(batch.id).request_counts
    assert counts is not None and counts.completed <= ITEMS - 20, \
        f"the job ran too fast to strike it mid-way: {counts}"
    return batch.id


def check_job(bs: BatchStack, batch_id: str, answered: list[str], failed: dict[str | None, str] | None = None,
              total: int = ITEMS, timeout_s: float = 120) -> dict[str, Any]:
    """The job completed with each of ``answered`` once in its output (status 200) and each of
    ``failed`` once in its error file (custom_id -> error code), and each answered item charged
    exactly once, at bulk priority with the batch discount. Returns figures for the report."""
    failed = failed or {}
    done = bs.wait_terminal(batch_id, timeout_s)
    assert done.status == "completed", f"{done.status} {done.errors}\n{bs.logs()}"
    output = bs.file_lines(done.output_file_id)
    errors = bs.file_lines(done.error_file_id)
    seen = Counter([line["custom_id"] for line in output] + [line["custom_id"] for line in errors])
    twice = sorted(str(c) for c, n in seen.items() if n > 1)
    assert not twice, f"results twice in the files: {twice}"
    lost = sorted(set(answered) - set(seen))
    assert not lost, f"{len(lost)} lines lost (in neither file): {lost[:20]}\n{bs.logs()}"
    assert sorted(line["custom_id"] for line in output) == sorted(answered)
    bad = [line for line in output if line["response"]["status_code"] != 200]
    assert not bad, f"{len(bad)} items not answered 200, first: {bad[0]}"
    assert {line["custom_id"]: error_code(line) for line in errors} == failed, errors
    counts = done.request_counts
    assert counts is not None
    assert (counts.total, counts.completed, counts.failed) == (total, len(answered), len(failed))

    # Charges: one ledger row per answered item, none for anything else of the batch.
    rows = bs.wait_ledger(batch_id, len(answered))
    by_index = {line["custom_id"]: line for line in output}
    expected_ids = sorted(line["response"]["request_id"] for line in by_index.values())
    assert len(set(expected_ids)) == len(answered), "two output lines share a request id"
    assert sorted(row["request_id"] for row in rows) == expected_ids, \
        f"ledger rows {len(rows)} for {len(answered)} answered items"
    book = pricebook()
    for row in rows:
        assert (row["priority"], row["status"], row["job_id"]) == ("bulk", "ok", batch_id), row
        cost, saved = bulk_charge(row, book)
        assert (row["cost_nanousd"], row["bulk_saved_nanousd"]) == (cost, saved), row
        assert saved > 0, f"no batch discount on {row['request_id']}"
    # What the output says was generated is what was charged.
    generated = sum(line["response"]["body"]["usage"]["completion_tokens"] for line in output)
    assert sum(row["completion_tokens"] for row in rows) == generated
    assert bs.usage_requests(batch_id) == len(answered)
    return {"rows": len(rows), "cost_nanousd": sum(row["cost_nanousd"] for row in rows)}


def error_code(line: dict[str, Any]) -> str:
    """An error file line's code: its own (never run) or the endpoint's answer's (refused)."""
    error = line.get("error") or line["response"]["body"]["error"]
    return str(error["code"])


def test_a_worker_killed_mid_job(bs: BatchStack) -> None:
    batch_id = start_job(bs)
    bs.kill("worker")
    bs.restart("worker")
    check_job(bs, batch_id, custom_ids())


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_nats_server_restarted_mid_job(bs: BatchStack, sig: int) -> None:
    batch_id = start_job(bs)
    bs.kill("nats", sig)
    # The same command: same port, same JetStream store on disk.
    bs.restart("nats")
    check_job(bs, batch_id, custom_ids())


def test_ingress_killed_mid_job(bs: BatchStack) -> None:
    batch_id = start_job(bs)
    batch = bs.retrieve(batch_id)
    bs.kill("ingress")
    bs.wait_dead("ingress")
    # The job goes on without ingress: items keep being charged while it is down.
    charged = len(bs.ledger_rows(batch.id))
    bs.wait_for("items answered while ingress is down",
                lambda: True if len(bs.ledger_rows(batch.id)) >= charged + 5 else None, timeout_s=30)
    assert bs.stack.procs["ingress"].process.poll() is not None
    bs.restart("ingress")
    check_job(bs, batch.id, custom_ids())
    # The restarted ingress serves the job and its files as before.
    again = bs.retrieve(batch.id)
    assert (again.id, again.input_file_id, again.status) == (batch.id, batch.input_file_id, "completed")
    assert bs.sdk.files.content(batch.input_file_id).content == b"".join(line + b"\n" for line in job_lines())
    assert batch.id in [b.id for b in bs.sdk.batches.list(limit=10).data]


def test_the_batch_service_killed_mid_job(bs: BatchStack) -> None:
    batch_id = start_job(bs)
    bs.kill("batch")
    bs.restart("batch")
    # Work messages the killed replica held come back after the work consumer's ack wait.
    check_job(bs, batch_id, custom_ids(), timeout_s=150)


def test_a_malformed_line_fails_alone(bs: BatchStack) -> None:
    lines = job_lines(12)
    lines[4] = b'{"custom_id": "item-4", "method": "POST", not json'
    lines[9] = json.dumps({**batch_line("item-9", "x"), "body": {"model": "smollm2-135m", "messages": []}}).encode()
    batch = bs.submit(lines)
    answered = [c for c in custom_ids(12) if c not in ("item-4", "item-9")]
    check_job(bs, batch.id, answered, failed={None: "invalid_json_line", "item-9": "invalid_request_error"}, total=12)
