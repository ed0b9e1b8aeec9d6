"""``skinflint batch publish`` against a real nats-server: the lines, msg ids and end message that
land in SF_BULK_IN, a publish run twice stored once, and a bad file refused before anything is sent."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig
from rich.console import Console
from typer.testing import CliRunner

from contracts.subjects import BULK_IN_STREAM, public_bulk_end_subject, public_bulk_subject
from contracts.v1 import BulkEnd, BulkLine, bus_batch_id
from services import cli_batch
from services.cli import app
from services.stack import NATS_CONFIG, NATS_SERVICE_PASSWORD_ENV, NATS_SERVICE_USER
from tests.integration.conftest import running_ingress, running_worker
from tests.support.batch import running_batch
from tests.support.fake_batch_api import ERRORS, OUTPUT, FakeSkinflint
from tests.support.natsd import NatsServer, start_nats_server

pytestmark = pytest.mark.integration
runner = CliRunner()


def request(custom_id: str, **extra: object) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "auto", "messages": [{"role": "user", "content": custom_id}]}, **extra})


async def create_stream(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(StreamConfig(name=BULK_IN_STREAM.name, subjects=list(BULK_IN_STREAM.subjects),
                                                     duplicate_window=BULK_IN_STREAM.duplicate_window_s))
    finally:
        await nc.close()


async def stored(url: str, subject: str) -> list[tuple[str, dict[str, str], bytes]]:
    """Every message SF_BULK_IN holds on ``subject`` (and below), in stream order."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(BULK_IN_STREAM.name)
        out: list[tuple[str, dict[str, str], bytes]] = []
        if info.state.messages == 0:
            return out
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(BULK_IN_STREAM.name, seq)
            name = msg.subject or ""
            if name == subject or name.startswith(subject + "."):
                out.append((name, dict(msg.headers or {}), msg.data or b""))
        return out
    finally:
        await nc.close()


@pytest.fixture
def bus(fresh_nats_server: NatsServer) -> str:
    asyncio.run(create_stream(fresh_nats_server.url))
    return fresh_nats_server.url


def test_publish_stores_each_line_then_the_end_once_however_often_it_runs(bus: str, tmp_path: Path) -> None:
    path = tmp_path / "job.jsonl"
    path.write_text(request("a") + "\n\n" + request("b") + "\n" + request("c", extra_field=1) + "\n")
    args = ["batch", "publish", str(path), "--job", "nightly-7", "--tenant", "acme", "--nats-url", bus,
            "--window", "2h", "-m", "team=x"]
    for _ in range(2):  # a second run (a retry) stores nothing twice
        result = runner.invoke(app, args, env={"SKINFLINT_API_KEY": ""})
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == bus_batch_id("acme", "nightly-7")

    messages = asyncio.run(stored(bus, public_bulk_subject("acme", "nightly-7")))
    assert [(s, h["Nats-Msg-Id"]) for s, h, _ in messages] == [
        (public_bulk_subject("acme", "nightly-7"), "nightly-7-1"),
        (public_bulk_subject("acme", "nightly-7"), "nightly-7-2"),
        (public_bulk_subject("acme", "nightly-7"), "nightly-7-3"),
        (public_bulk_end_subject("acme", "nightly-7"), "nightly-7-end"),
    ]
    lines = [json.loads(data) for _, _, data in messages[:3]]
    assert [line["custom_id"] for line in lines] == ["a", "b", "c"]
    assert all(set(line) == {"custom_id", "body"} for line in lines)  # method and url are not sent
    assert BulkLine.model_validate(lines[0]).body["messages"][0]["content"] == "a"
    assert BulkEnd.model_validate_json(messages[3][2]) == BulkEnd(lines=3, completion_window="2h",
                                                                  metadata={"team": "x"})


@pytest.mark.parametrize(("content", "message"), [
    (request("a") + "\n{not json\n", "line 2: not valid JSON"),
    (request("a") + "\n" + json.dumps({"custom_id": "b", "body": "hi"}) + "\n", "line 2: body: "),
    (json.dumps({"body": {}}) + "\n", "line 1: custom_id: "),
    (request("a", url="/v1/embeddings") + "\n", "line 1: url must be '/v1/chat/completions'"),
    ("\n \n", "holds no requests"),
])
def test_a_file_a_bulk_line_cannot_carry_is_refused_before_anything_is_sent(
        bus: str, tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    result = runner.invoke(app, ["batch", "publish", str(path), "--job", "j", "--tenant", "acme", "--nats-url", bus],
                           env={"SKINFLINT_API_KEY": ""})
    assert result.exit_code == 2
    assert message in result.stderr
    assert asyncio.run(stored(bus, public_bulk_subject("acme", "j"))) == []


def test_without_the_stream_publish_says_what_to_check(fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    path = tmp_path / "job.jsonl"
    path.write_text(request("a") + "\n")
    result = runner.invoke(app, ["batch", "publish", str(path), "--job", "j", "--tenant", "acme",
                                 "--nats-url", fresh_nats_server.url], env={"SKINFLINT_API_KEY": ""})
    assert result.exit_code == 2
    assert "no JetStream stream stores sf.v1.bulk.in.acme.j" in result.stderr


def test_bad_names_and_no_server_are_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "job.jsonl"
    path.write_text(request("a") + "\n")
    result = runner.invoke(app, ["batch", "publish", str(path), "--job", "a.b", "--tenant", "acme"])
    assert result.exit_code == 2 and "--job 'a.b'" in result.stderr
    result = runner.invoke(app, ["batch", "publish", str(path), "--job", "j", "--tenant", "acme",
                                 "--nats-url", "nats://127.0.0.1:1"], env={"SKINFLINT_API_KEY": ""})
    assert result.exit_code == 2 and "could not connect to NATS at nats://127.0.0.1:1" in result.stderr


def test_publish_wait_follows_the_job_over_http_once_it_appears(bus: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    batch_id = bus_batch_id("acme", "follow-me")
    # 404 for the check that the job is new, and twice more while the batch service takes it.
    server = FakeSkinflint(batch_id=batch_id, absent_polls=3)
    monkeypatch.setattr(cli_batch, "make_client", server.client)
    monkeypatch.setattr(cli_batch, "out", Console(width=250))
    path = tmp_path / "job.jsonl"
    path.write_text(request("a") + "\n" + request("b") + "\n")
    result = runner.invoke(app, ["batch", "publish", str(path), "--job", "follow-me", "--tenant", "acme",
                                 "--nats-url", bus, "--wait", "--interval", "0", "--api-key", "sk-test"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == batch_id
    assert server.absent_polls == 0 and server.polls == 4
    assert (tmp_path / "job.output.jsonl").read_bytes() == OUTPUT
    assert (tmp_path / "job.errors.jsonl").read_bytes() == ERRORS
    assert len(asyncio.run(stored(bus, public_bulk_subject("acme", "follow-me")))) == 3


def test_publish_refuses_a_job_name_already_used(bus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeSkinflint(batch_id=bus_batch_id("acme", "done"))
    monkeypatch.setattr(cli_batch, "make_client", server.client)
    path = tmp_path / "job.jsonl"
    path.write_text(request("a") + "\n")
    result = runner.invoke(app, ["batch", "publish", str(path), "--job", "done", "--tenant", "acme",
                                 "--nats-url", bus, "--api-key", "sk-test"])
    assert result.exit_code == 2
    assert "job 'done' already exists as batch batch_bus_" in result.stderr
    assert asyncio.run(stored(bus, public_bulk_subject("acme", "done"))) == []


def chat_line(custom_id: str) -> str:
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": custom_id}], "max_tokens": 2}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


async def test_submit_and_publish_run_through_skinflint(fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    """The CLI with its real client against ingress, the batch service and a worker (fake engine):
    a file over HTTP (its unreadable line in the error file) and the same requests as a bus job."""
    url = fresh_nats_server.url
    async with running_worker(url), running_batch(url, pipeline=["infer"]), \
            running_ingress(url, pipeline=["infer"]) as (service, _):
        http = ["--url", f"http://127.0.0.1:{service.port}", "--api-key", "sk-skinflint-demo", "--interval", "0.1"]
        submitted = tmp_path / "submitted.jsonl"
        submitted.write_text(chat_line("one") + "\n{not json\n" + chat_line("two") + "\n")
        result = await asyncio.to_thread(runner.invoke, app, ["batch", "submit", str(submitted), "--wait", *http])
        assert result.exit_code == 0, result.output
        assert "3 total, 2 completed, 1 failed, 0 pending" in result.stdout
        answers = [json.loads(x) for x in (tmp_path / "submitted.output.jsonl").read_text().splitlines()]
        assert sorted(a["custom_id"] for a in answers) == ["one", "two"]
        assert all(a["response"]["body"]["object"] == "chat.completion" for a in answers)
        failed = [json.loads(x) for x in (tmp_path / "submitted.errors.jsonl").read_text().splitlines()]
        assert [f["error"]["code"] for f in failed] == ["invalid_json_line"]

        published = tmp_path / "published.jsonl"
        published.write_text(chat_line("three") + "\n" + chat_line("four") + "\n")
        result = await asyncio.to_thread(runner.invoke, app, [
            "batch", "publish", str(published), "--job", "cli-run", "--tenant", "demo", "--nats-url", url, "--wait",
            *http])
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[0] == bus_batch_id("demo", "cli-run")
        answers = [json.loads(x) for x in (tmp_path / "published.output.jsonl").read_text().splitlines()]
        assert sorted(a["custom_id"] for a in answers) == ["four", "three"]
        assert not (tmp_path / "published.errors.jsonl").exists()


@pytest.fixture(scope="module")
def secured() -> Iterator[tuple[str, str]]:
    """nats-server with skinflint's users and permissions (infra/nats/) and SF_BULK_IN; (url, the
    services' password)."""
    password = secrets.token_urlsafe(18)
    server = start_nats_server(config=NATS_CONFIG, env={NATS_SERVICE_PASSWORD_ENV: password})
    url = f"nats://{NATS_SERVICE_USER}:{password}@127.0.0.1:{server.port}"
    asyncio.run(create_stream(url))
    yield server.url, url
    server.stop()


def test_publish_as_the_tenants_nats_user(secured: tuple[str, str], tmp_path: Path) -> None:
    public, services = secured
    path = tmp_path / "job.jsonl"
    path.write_text(request("a") + "\n" + request("b") + "\n")
    demo = ["--user", "demo", "--password", "sf-bus-demo-dev", "--nats-url", public]
    result = runner.invoke(app, ["batch", "publish", str(path), "--job", "secured", "--tenant", "demo", *demo],
                           env={"SKINFLINT_API_KEY": ""})
    assert result.exit_code == 0, result.output
    assert len(asyncio.run(stored(services, public_bulk_subject("demo", "secured")))) == 3

    # Another tenant's subject: NATS refuses it, and the CLI says so (no wait for acks that never come).
    result = runner.invoke(app, ["batch", "publish", str(path), "--job", "secured", "--tenant", "acme", *demo],
                           env={"SKINFLINT_API_KEY": ""})
    assert result.exit_code == 2
    assert "NATS refused the publish on sf.v1.bulk.in.acme.secured" in result.stderr
    assert "permissions violation" in result.stderr.lower()
    assert asyncio.run(stored(services, public_bulk_subject("acme", "secured"))) == []

    result = runner.invoke(app, ["batch", "publish", str(path), "--job", "x", "--tenant", "demo", "--user", "demo",
                                 "--password", "wrong", "--nats-url", public], env={"SKINFLINT_API_KEY": ""})
    assert result.exit_code == 2
    assert f"could not connect to NATS at {public}" in result.stderr and "uthorization" in result.stderr
