"""``skinflint batch ...`` against a fake OpenAI-compatible server (tests.support.fake_batch_api)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from rich.console import Console
from typer.testing import CliRunner

from services import cli_batch
from services.cli import app
from services.stack import free_port
from tests.support.fake_batch_api import ERRORS, OUTPUT, FakeSkinflint, batch_object

pytestmark = pytest.mark.unit
KEY = ["--api-key", "sk-test"]
LINES = "".join(json.dumps({"custom_id": c, "method": "POST", "url": "/v1/chat/completions",
                            "body": {"model": "auto", "messages": [{"role": "user", "content": c}]}}) + "\n"
                for c in "abc")



@pytest.fixture(autouse=True)
def wide_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables at a width where no value is wrapped (the checks read whole values)."""
    monkeypatch.setattr(cli_batch, "out", Console(width=250))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeSkinflint:
    server = FakeSkinflint()
    monkeypatch.setattr(cli_batch, "make_client", server.client)
    return server


@pytest.fixture
def input_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text(LINES)
    return path


runner = CliRunner()


def test_submit_waits_through_the_statuses_and_downloads_both_files(fake: FakeSkinflint, input_file: Path) -> None:
    result = runner.invoke(app, ["batch", "submit", str(input_file), "--wait", "--interval", "0",
                                 "-m", "team=x", "-m", "run=7", "--window", "2h", *KEY])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "batch_1"
    assert b'name="purpose"' in fake.uploads[0] and b"batch" in fake.uploads[0]
    assert LINES.encode() in fake.uploads[0]
    assert fake.created == [{"input_file_id": "file-in", "endpoint": "/v1/chat/completions",
                             "completion_window": "2h", "metadata": {"team": "x", "run": "7"}}]
    assert fake.polls == 4
    assert (input_file.parent / "prompts.output.jsonl").read_bytes() == OUTPUT
    assert (input_file.parent / "prompts.errors.jsonl").read_bytes() == ERRORS
    assert "completed" in result.stdout and "3 total, 2 completed, 1 failed, 0 pending" in result.stdout
    assert "prompts.output.jsonl (2 lines)" in result.stdout


def test_submit_without_wait_prints_the_id_only(fake: FakeSkinflint, input_file: Path) -> None:
    result = runner.invoke(app, ["batch", "submit", str(input_file), *KEY])
    assert result.exit_code == 0, result.output
    assert result.stdout == "batch_1\n"
    assert fake.polls == 0
    assert "metadata" not in fake.created[0] or fake.created[0]["metadata"] is None


def test_a_batch_that_expires_exits_1_with_its_files(monkeypatch: pytest.MonkeyPatch, input_file: Path,
                                                    tmp_path: Path) -> None:
    server = FakeSkinflint(final="expired")
    monkeypatch.setattr(cli_batch, "make_client", server.client)
    result = runner.invoke(app, ["batch", "submit", str(input_file), "--wait", "--interval", "0",
                                 "--output", str(tmp_path / "o.jsonl"), "--errors", str(tmp_path / "e.jsonl"), *KEY])
    assert result.exit_code == 1, result.output
    assert (tmp_path / "e.jsonl").read_bytes() == ERRORS
    assert "expired" in result.stdout


def test_status_shows_skinflint_progress_and_the_jobs_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeSkinflint(usage={"rows": [
        {"tenant": "t", "tier": "small", "requests": 4, "cost_usd": "0.000150000", "reference_cost_usd": "0.001"},
        {"tenant": "t", "tier": "large", "requests": 1, "cost_usd": "0.000050000", "reference_cost_usd": "0"}]})
    server.steps[0] = batch_object("batch_1", "in_progress", 10, 4, 1, skinflint={"progress": {
        "pending": 5, "per_second": 2.5, "eta_s": 125.0, "elapsed_s": 2.0}})
    monkeypatch.setattr(cli_batch, "make_client", server.client)
    result = runner.invoke(app, ["batch", "status", "batch_1", *KEY])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "in_progress" in out and "10 total, 4 completed, 1 failed, 5 pending" in out
    assert "2.50 req/s" in out and "2m05s" in out
    assert "30 in (6 cached), 9 out" in out
    assert "$0.000200 (without skinflint $0.001000, saved 80.0%)" in out
    usage = [r for r in server.requests if r.url.path == "/v1/usage"]
    assert usage[0].url.params["job_id"] == "batch_1"


@pytest.mark.parametrize("usage", [
    None, {"rows": []},
    {"rows": [{"requests": 11, "cost_usd": "9.0", "reference_cost_usd": "9.0"}]},  # more than the batch: unfiltered
], ids=["usage-fails", "nothing-charged", "usage-not-filtered"])
def test_status_leaves_the_cost_out_when_usage_cannot_say(monkeypatch: pytest.MonkeyPatch,
                                                          usage: dict[str, Any] | None) -> None:
    server = FakeSkinflint(usage=usage)
    server.steps[0] = batch_object("batch_1", "in_progress", 10, 4, 1)
    monkeypatch.setattr(cli_batch, "make_client", server.client)
    result = runner.invoke(app, ["batch", "status", "batch_1", *KEY])
    assert result.exit_code == 0, result.output
    assert "in_progress" in result.stdout and "cost" not in result.stdout


def test_status_watch_follows_to_the_end(fake: FakeSkinflint) -> None:
    result = runner.invoke(app, ["batch", "status", "batch_1", "--watch", "--interval", "0", *KEY])
    assert result.exit_code == 0, result.output
    assert fake.polls == 4 and "completed" in result.stdout


def test_ctrl_c_stops_waiting_and_leaves_the_batch_running(fake: FakeSkinflint, input_file: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    handle = fake.handle

    def interrupted(request: httpx2.Request) -> httpx2.Response:
        if fake.polls == 2:
            raise KeyboardInterrupt
        return handle(request)

    monkeypatch.setattr(fake, "handle", interrupted)
    result = runner.invoke(app, ["batch", "submit", str(input_file), "--wait", "--interval", "0", *KEY])
    assert result.exit_code == 130
    assert "batch batch_1 keeps running" in result.stderr and "skinflint batch cancel batch_1" in result.stderr
    assert not any(r.url.path.endswith("/cancel") for r in fake.requests)
    assert not (input_file.parent / "prompts.output.jsonl").exists()


def test_cancel(fake: FakeSkinflint) -> None:
    result = runner.invoke(app, ["batch", "cancel", "batch_1", *KEY])
    assert result.exit_code == 0, result.output
    assert "batch batch_1: cancelling (1 of 3 finished" in result.stdout
    assert [(r.method, r.url.path) for r in fake.requests] == [("POST", "/v1/batches/batch_1/cancel")]


def test_list_and_download(fake: FakeSkinflint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listed = runner.invoke(app, ["batch", "list", *KEY])
    assert listed.exit_code == 0, listed.output
    assert "batch_1" in listed.stdout and "3/3" in listed.stdout
    monkeypatch.chdir(tmp_path)
    fake.polls = 3  # the batch is over
    result = runner.invoke(app, ["batch", "download", "batch_1", *KEY])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "batch_1.output.jsonl").read_bytes() == OUTPUT
    assert (tmp_path / "batch_1.errors.jsonl").read_bytes() == ERRORS


def test_download_before_the_end_says_so(fake: FakeSkinflint) -> None:
    result = runner.invoke(app, ["batch", "download", "batch_1", *KEY])
    assert result.exit_code == 2
    assert "has no files yet (status validating)" in result.stderr


@pytest.mark.parametrize("command", [["status", "batch_nope"], ["cancel", "batch_nope"],
                                     ["download", "batch_nope"], ["status", "batch_nope", "--watch"]])
def test_an_api_error_is_one_red_line_and_exit_2(fake: FakeSkinflint, command: list[str]) -> None:
    result = runner.invoke(app, ["batch", *command, *KEY])
    assert result.exit_code == 2
    assert result.stderr.strip() == "404: no batch 'batch_nope'"
    assert isinstance(result.exception, SystemExit)


def test_no_server_is_exit_2_without_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_batch, "make_client",
                        lambda base, key: openai.OpenAI(base_url=base, api_key=key, max_retries=0))
    port = free_port()
    result = runner.invoke(app, ["batch", "status", "batch_1", "--url", f"http://127.0.0.1:{port}", *KEY])
    assert result.exit_code == 2
    assert f"http://127.0.0.1:{port}/v1 did not answer" in result.stderr
    assert "Traceback" not in result.output


def test_missing_key_and_bad_metadata_are_refused_before_any_request(fake: FakeSkinflint, input_file: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SKINFLINT_API_KEY", raising=False)
    result = runner.invoke(app, ["batch", "status", "batch_1"])
    assert result.exit_code == 2 and "no API key" in result.stderr
    result = runner.invoke(app, ["batch", "submit", str(input_file), "-m", "novalue", *KEY])
    assert result.exit_code == 2 and "--metadata 'novalue': write KEY=VALUE" in result.stderr
    assert fake.requests == []


def test_figures_without_skinflint_progress_come_from_the_standard_fields() -> None:
    batch = openai.types.Batch.model_validate(batch_object("b", "in_progress", 10, 3, 1))
    f = cli_batch.figures(batch, now=1_764_000_001 + 2)
    assert (f.done, f.per_second, f.eta_s, f.elapsed_s) == (4, 2.0, 3.0, 2.0)
    assert cli_batch.duration(3725) == "1h02m" and cli_batch.duration(None) == "-"
    assert cli_batch.api_base("http://h:1/") == "http://h:1/v1" == cli_batch.api_base("http://h:1/v1")
