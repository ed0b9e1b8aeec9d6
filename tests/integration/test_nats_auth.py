"""The bus's users and subject permissions (infra/nats/), against a real nats-server started with
that configuration: a tenant's NATS user publishes bulk work only as itself, reads only its own
output and replies, and touches nothing of skinflint's own; the services user does everything.

The tenants are users.conf's development users (demo, acme) with their development passwords.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import nats
import pytest
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from contracts.subjects import (
    BATCH_START_SUBJECT,
    BULK_IN_STREAM,
    USAGE_SUBJECT,
    Priority,
    batch_result_subject,
    batch_work_subject,
    infer_subject,
    public_bulk_end_subject,
    public_bulk_output_subject,
    public_bulk_output_wildcard,
    public_bulk_subject,
)
from contracts.v1.batch import BulkEnd, BulkLine
from services.stack import (
    NATS_CONFIG,
    NATS_SERVICE_PASSWORD_ENV,
    NATS_SERVICE_USER,
    Stack,
    free_port,
    nats_url,
)
from tests.support.natsd import NatsServer, start_nats_server

pytestmark = pytest.mark.integration

#: users.conf's development passwords.
PASSWORDS = {"demo": "sf-bus-demo-dev", "acme": "sf-bus-acme-dev"}
#: How long to wait for what must come (an answer, the server's error); nothing is timed.
WAIT_S = 10


@dataclass
class Bus:
    """A connection and the errors the server sent it (a refused publish or subscription is an
    asynchronous ``-ERR``: the connection stays up)."""

    nc: Client
    errors: list[str] = field(default_factory=list)
    _new_error: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_error(self, exc: Exception) -> None:
        self.errors.append(str(exc))
        self._new_error.set()

    async def refused(self, subject: str) -> str:
        """The server's permissions violation naming ``subject`` (waits for it)."""
        async def arrived() -> str:
            while True:
                # nats-py lower-cases the server's message.
                found = [e for e in self.errors if 'permissions violation for ' in e and f'"{subject.lower()}"' in e]
                if found:
                    return found[0]
                self._new_error.clear()
                await self._new_error.wait()
        return await asyncio.wait_for(arrived(), WAIT_S)


@pytest.fixture(scope="module")
def service_password() -> str:
    return secrets.token_urlsafe(18)


@pytest.fixture(scope="module")
def server(service_password: str) -> Iterator[NatsServer]:
    server = start_nats_server(config=NATS_CONFIG, env={NATS_SERVICE_PASSWORD_ENV: service_password})
    yield server
    server.stop()


async def connect(server: NatsServer, user: str | None, password: str | None, **options: object) -> Bus:
    bus = Bus(nc=Client())
    await bus.nc.connect(server.url, user=user, password=password, error_cb=bus.on_error,
                         allow_reconnect=False, connect_timeout=WAIT_S, **options)  # type: ignore[arg-type]
    return bus


@pytest.fixture
async def services(server: NatsServer, service_password: str) -> AsyncIterator[Bus]:
    bus = await connect(server, NATS_SERVICE_USER, service_password)
    js = bus.nc.jetstream()
    await js.add_stream(StreamConfig(
        name=BULK_IN_STREAM.name, subjects=list(BULK_IN_STREAM.subjects),
        retention=RetentionPolicy(BULK_IN_STREAM.retention), storage=StorageType.FILE,
        duplicate_window=BULK_IN_STREAM.duplicate_window_s, max_age=BULK_IN_STREAM.max_age_s))
    yield bus
    await js.delete_stream(BULK_IN_STREAM.name)
    await bus.nc.close()
    assert bus.errors == [], "the services user was refused something"


async def tenant(server: NatsServer, name: str) -> Bus:
    """A tenant as infra/nats/README.md tells it to connect: its user, its own inbox prefix."""
    return await connect(server, name, PASSWORDS[name], inbox_prefix=f"_INBOX_{name}")


@pytest.fixture
async def demo(server: NatsServer, services: Bus) -> AsyncIterator[Bus]:
    bus = await tenant(server, "demo")
    yield bus
    await bus.nc.close()


async def stored(services: Bus) -> int:
    info = await services.nc.jetstream().stream_info(BULK_IN_STREAM.name)
    return int(info.state.messages)


def line(custom_id: str) -> bytes:
    return BulkLine(custom_id=custom_id, body={"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
                    ).model_dump_json().encode()


async def test_a_tenant_publishes_its_own_bulk_job_and_gets_jetstreams_acks(demo: Bus, services: Bus) -> None:
    js = demo.nc.jetstream()
    for i in range(2):
        ack = await js.publish(public_bulk_subject("demo", "job1"), line(f"r{i}"),
                               headers={"Nats-Msg-Id": f"job1-{i}"}, timeout=WAIT_S)
        assert ack.stream == BULK_IN_STREAM.name and not ack.duplicate
    again = await js.publish(public_bulk_subject("demo", "job1"), line("r0"), headers={"Nats-Msg-Id": "job1-0"},
                             timeout=WAIT_S)
    assert again.duplicate  # a retried line is stored once
    end = await js.publish(public_bulk_end_subject("demo", "job1"), BulkEnd(lines=2).model_dump_json().encode(),
                           headers={"Nats-Msg-Id": "job1-end"}, timeout=WAIT_S)
    assert end.seq == 3
    assert await stored(services) == 3
    msg = await services.nc.jetstream().get_msg(BULK_IN_STREAM.name, 1)
    assert msg.subject == public_bulk_subject("demo", "job1")
    assert demo.errors == []


async def test_a_tenant_cannot_publish_as_another_tenant(demo: Bus, services: Bus) -> None:
    with pytest.raises(NatsTimeoutError):  # the message is dropped: no stream ever answers
        await demo.nc.jetstream().publish("sf.v1.bulk.in.acme.x", line("r0"), timeout=1)
    await demo.refused("sf.v1.bulk.in.acme.x")
    await demo.nc.publish(public_bulk_end_subject("acme", "x"), BulkEnd(lines=1).model_dump_json().encode())
    await demo.refused(public_bulk_end_subject("acme", "x"))
    assert await stored(services) == 0


@pytest.mark.parametrize("subject", [
    infer_subject("small", Priority.BULK), batch_work_subject("demo", "x"), batch_result_subject("demo", "x"),
    BATCH_START_SUBJECT, USAGE_SUBJECT, f"$JS.API.STREAM.DELETE.{BULK_IN_STREAM.name}",
    public_bulk_output_subject("demo", "x"),
])
async def test_a_tenant_cannot_publish_on_skinflints_own_subjects(subject: str, demo: Bus, services: Bus) -> None:
    heard = await services.nc.subscribe(subject)
    await services.nc.flush()
    await demo.nc.publish(subject, b"{}")
    await demo.refused(subject)
    # What the services' connection holds arrived before this round trip's answer.
    await services.nc.flush()
    assert heard.pending_msgs == 0
    assert await stored(services) == 0  # the stream (the delete request's target) is still there


async def test_a_tenant_reads_only_its_own_output_and_replies(demo: Bus, services: Bus) -> None:
    own = await demo.nc.subscribe(public_bulk_output_wildcard("demo"))
    others = [await demo.nc.subscribe(subject) for subject in (
        public_bulk_output_wildcard("acme"), "_INBOX.>", "_INBOX_acme.>", "sf.v1.>", ">", "$JS.API.>")]
    for sub in others:
        await demo.refused(sub.subject)
    await services.nc.publish(public_bulk_output_subject("acme", "j"), b"acme's")
    await services.nc.publish("_INBOX.reply", b"a service's reply")
    await services.nc.publish(public_bulk_output_subject("demo", "j"), b"demo's")
    # The server writes one publisher's messages to a connection in order: once demo's own has
    # arrived, any of the others it were allowed would be queued already.
    assert (await own.next_msg(timeout=WAIT_S)).data == b"demo's"
    assert [sub.pending_msgs for sub in others] == [0] * len(others)


async def test_a_tenant_needs_its_own_inbox_prefix_for_acks(server: NatsServer, services: Bus) -> None:
    bus = await connect(server, "demo", PASSWORDS["demo"])  # the default inbox, _INBOX
    try:
        with pytest.raises(NatsTimeoutError):
            await bus.nc.jetstream().publish(public_bulk_subject("demo", "job2"), line("r0"), timeout=1)
        assert any("permissions violation for subscription to \"_inbox." in e for e in bus.errors), bus.errors
    finally:
        await bus.nc.close()


@pytest.mark.parametrize(("user", "password"), [
    ("demo", "wrong"), ("demo", PASSWORDS["acme"]), ("nobody", "x"), (None, None), (NATS_SERVICE_USER, "wrong"),
])
async def test_wrong_credentials_are_refused(server: NatsServer, user: str | None, password: str | None) -> None:
    bus = Bus(nc=Client())
    with pytest.raises(NatsError, match=r"(?i)authorization violation"):
        await bus.nc.connect(server.url, user=user, password=password, error_cb=bus.on_error,
                             allow_reconnect=False, connect_timeout=WAIT_S)
    assert not bus.nc.is_connected


async def test_the_services_user_may_do_everything(server: NatsServer, service_password: str, services: Bus) -> None:
    # As the services connect: the credentials in SF_NATS_URL.
    nc = await nats.connect(nats_url(server.port, NATS_SERVICE_USER, service_password), allow_reconnect=False)
    try:
        everything = await nc.subscribe(">")
        subjects = [infer_subject("small", Priority.BULK), USAGE_SUBJECT, public_bulk_output_subject("acme", "j"),
                    "_INBOX.x"]
        for subject in subjects:
            await nc.publish(subject, b"{}")
        assert [(await everything.next_msg(timeout=WAIT_S)).subject for _ in subjects] == subjects
        ack = await nc.jetstream().publish(public_bulk_subject("acme", "j"), line("r0"), timeout=WAIT_S)
        assert ack.stream == BULK_IN_STREAM.name
    finally:
        await nc.close()



def test_services_started_as_make_run_starts_them_connect_as_the_services_user(
        stack_factory: Callable[[], Stack]) -> None:
    stack = stack_factory()
    password = secrets.token_urlsafe(18)
    stack.start_nats(free_port(), config=NATS_CONFIG, service_password=password)
    assert password in stack.env["SF_NATS_URL"] and password not in stack.public_nats_url
    for name in ("accounting", "batch"):
        proc = stack.start_service(name, f"services.{name}")
        assert proc.health_port is not None
        stack.wait_http(proc.health_port, "/readyz", timeout_s=120, what=f"{name} on the bus")
    stack.stop()
    for log in (stack.var_dir / "log").glob("*.log"):
        assert password not in log.read_text(errors="replace"), f"{log} shows the password"
