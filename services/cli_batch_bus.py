"""``skinflint batch publish``'s bus side: a batch input file published as a bus job.

A tenant's NATS user publishes each request as a ``contracts.v1.BulkLine`` on its job's subject
(``public_bulk_subject``), then one ``BulkEnd``; the batch service runs the job under the batch id
``bus_batch_id(tenant, job)``. Every message carries a ``Nats-Msg-Id`` (``<job>-<n>`` for the n-th
request, ``<job>-end``), so publishing the same file again within the stream's duplicate window
(an hour) stores nothing twice: a publish cut short is finished by running it again.

The file is checked whole before anything is sent (``check_file``): a line that cannot be a
``BulkLine`` (not JSON, no custom_id, body not an object, another method or endpoint) refuses the
file with a message naming the line, so the bus never holds half a job. Over HTTP the same line
would fail only itself; on the bus it has no form to travel in, as a ``BulkLine`` cannot hold it.

Nothing here knows typer or rich: the command (``services.cli_batch``) passes a progress callback.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoServersError
from nats.js.errors import NoStreamResponseError
from pydantic import ValidationError

from contracts.subjects import public_bulk_end_subject, public_bulk_subject
from contracts.v1 import BulkEnd, BulkLine

CHAT_ENDPOINT = "/v1/chat/completions"
#: Publishes awaiting their acknowledgement at once (the order on the wire stays the file's).
WINDOW = 256
#: How long one acknowledgement may take before that line is published again (same msg id).
ACK_TIMEOUT_S = 10.0
ATTEMPTS = 3
_TOKEN = re.compile(r"[^.*>\s]{1,128}")


class FileRefused(Exception):
    """The input file cannot be published; the message names the line and what to change."""


class BusError(Exception):
    """NATS refused or did not answer; the message says what to check."""


@dataclass(frozen=True)
class BusTarget:
    url: str
    tenant: str
    job: str
    user: str | None = None
    password: str | None = None


def check_token(name: str, value: str) -> None:
    """Raise ``FileRefused`` unless ``value`` is one NATS subject token (tenant and job names are)."""
    if not _TOKEN.fullmatch(value):
        raise FileRefused(f"{name} {value!r}: use 1 to 128 characters without '.', '*', '>' or whitespace")


def bulk_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(n, BulkLine JSON)`` for the n-th request (1-based) of the file; blank lines are skipped.

    Raises ``FileRefused`` naming the physical line (what an editor shows) of the first bad one."""
    n = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            n += 1
            yield n, _bulk_line(number, raw).model_dump_json().encode()
    if n == 0:
        raise FileRefused(f"{path} holds no requests: put one JSON request on each line")


def check_file(path: Path) -> int:
    """How many requests the file holds, every line checked (``FileRefused`` on the first bad one)."""
    return sum(1 for _ in bulk_lines(path))


def _bulk_line(number: int, raw: bytes) -> BulkLine:
    try:
        data: Any = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FileRefused(f"line {number}: not valid JSON ({exc}); put one JSON object on each line") from exc
    if not isinstance(data, dict):
        raise FileRefused(f"line {number}: JSON but not an object; put one JSON object on each line")
    if data.get("method", "POST") != "POST":
        raise FileRefused(f"line {number}: method must be \"POST\", not {data['method']!r}")
    if data.get("url", CHAT_ENDPOINT) != CHAT_ENDPOINT:
        raise FileRefused(f"line {number}: url must be {CHAT_ENDPOINT!r} (bus jobs run chat completions), "
                          f"not {data['url']!r}")
    try:
        return BulkLine.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "line"
        raise FileRefused(f"line {number}: {field}: {first['msg']} (each line holds custom_id and body)") from exc


async def publish_job(target: BusTarget, path: Path, end: BulkEnd, advance: Callable[[], None]) -> None:
    """Publish every request of ``path`` then ``end``, each acknowledged by JetStream.

    ``advance`` is called once per acknowledged request. Raises ``FileRefused`` (a bad line: run
    ``check_file`` first to refuse before anything is sent) or ``BusError``."""
    errors: list[str] = []
    denied = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc) or type(exc).__name__)
        if "permissions violation" in str(exc).lower() or "authorization" in str(exc).lower():
            denied.set()

    try:
        nc = await nats.connect(target.url, user=target.user, password=target.password,
                                inbox_prefix=f"_INBOX_{target.tenant}", connect_timeout=5,
                                max_reconnect_attempts=2, reconnect_time_wait=1, error_cb=on_error)
    except (TimeoutError, NoServersError, OSError, NatsError) as exc:
        # The server's refusal says more than the resets of the attempts after it.
        refusals = [e for e in errors if "authorization" in e.lower()]
        why = (refusals or errors or [str(exc) or type(exc).__name__])[-1]
        raise BusError(f"could not connect to NATS at {target.url}: {why}") from exc
    try:
        await _publish(nc, target, path, end, advance, errors, denied)
    finally:
        await nc.close()


async def _publish(nc: Client, target: BusTarget, path: Path, end: BulkEnd, advance: Callable[[], None],
                   errors: list[str], denied: asyncio.Event) -> None:
    js = nc.jetstream(timeout=ACK_TIMEOUT_S, publish_async_max_pending=WINDOW)
    subject = public_bulk_subject(target.tenant, target.job)
    denied_wait = asyncio.ensure_future(denied.wait())

    async def settle(n: int, payload: bytes, future: asyncio.Future[Any]) -> None:
        """Wait for line n's ack; publish it again (same msg id: stored once) if none comes."""
        for attempt in range(ATTEMPTS):
            done, _ = await asyncio.wait({future, denied_wait}, timeout=ACK_TIMEOUT_S,
                                         return_when=asyncio.FIRST_COMPLETED)
            if denied.is_set():
                raise BusError(f"NATS refused the publish on {subject}: {errors[-1]} (connect as tenant "
                               f"{target.tenant!r}'s NATS user: each may publish under its own tenant only)")
            if future in done:
                exc = future.exception()
                if exc is None:
                    advance()
                    return
                if isinstance(exc, NoStreamResponseError):
                    raise BusError(f"no JetStream stream stores {subject}: is skinflint's batch service "
                                   "running (it creates the SF_BULK_IN stream)?") from exc
                errors.append(str(exc) or type(exc).__name__)
            else:
                future.cancel()
            if attempt + 1 < ATTEMPTS:
                future = await js.publish_async(subject, payload, headers=_msg_id(target.job, n))
        raise BusError(f"JetStream did not acknowledge request {n} of job {target.job!r} after {ATTEMPTS} "
                       f"tries ({errors[-1] if errors else 'no answer'}); publishing again resumes the job")

    try:
        in_flight: deque[tuple[int, bytes, asyncio.Future[Any]]] = deque()
        for n, payload in bulk_lines(path):
            in_flight.append((n, payload, await js.publish_async(subject, payload, headers=_msg_id(target.job, n))))
            while len(in_flight) >= WINDOW:
                await settle(*in_flight.popleft())
        while in_flight:
            await settle(*in_flight.popleft())
        end_subject = public_bulk_end_subject(target.tenant, target.job)
        try:
            await js.publish(end_subject, end.model_dump_json().encode(), headers={"Nats-Msg-Id": f"{target.job}-end"})
        except NoStreamResponseError as exc:
            raise BusError(f"no JetStream stream stores {end_subject}: is skinflint's batch service running?") from exc
        except (TimeoutError, NatsError) as exc:
            why = errors[-1] if errors else (str(exc) or type(exc).__name__)
            raise BusError(f"the end of job {target.job!r} was not acknowledged ({why}); publish again") from exc
    finally:
        denied_wait.cancel()


def _msg_id(job: str, n: int) -> dict[str, str]:
    return {"Nats-Msg-Id": f"{job}-{n}"}
