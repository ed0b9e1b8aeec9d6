"""A job's input, read the same way whichever entry point it came through.

An HTTP batch names an uploaded file. A bus job's lines are messages in ``SF_BULK_IN``: when its
end message arrives, they are written, in stream order, into an input file of the tenant's
(deterministic id, so a retry writes nothing new), and from then on the job is an ordinary batch
of that file. Reading the input again (to start the job, and to write its output with each line's
``custom_id``) always gives the same items: parsing is deterministic.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from contracts.subjects import BULK_IN_STREAM, public_bulk_subject
from services.batch.files import FilePurpose
from services.batch.lines import CHAT_ENDPOINT, InputLimits, LineResult, parse_file, scan
from services.batch.store import FileStore

log = logging.getLogger(__name__)

_FETCH = 256


def bus_input_file_id(batch_id: str) -> str:
    """The id of the input file a bus job's lines are written into."""
    return f"file-{batch_id}-input"


@dataclass(frozen=True)
class BusLines:
    """A bus job's lines as the stream holds them, up to its end message."""

    lines: list[bytes]


async def read_bus_lines(js: JetStreamContext, tenant: str, job: str, before_seq: int) -> BusLines:
    """Every message on ``tenant``'s job subject stored before sequence ``before_seq`` (its end
    message), in stream order. An ephemeral consumer, removed afterwards."""
    sub = await js.pull_subscribe(
        public_bulk_subject(tenant, job), stream=BULK_IN_STREAM.name,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE,
                              inactive_threshold=60.0))
    lines: list[bytes] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(_FETCH, timeout=1.0)
            except TimeoutError:
                break
            done = False
            for msg in msgs:
                if msg.metadata.sequence.stream >= before_seq:
                    done = True
                    break
                lines.append(msg.data)
            if done or (msgs and msgs[-1].metadata.num_pending == 0):
                break
    finally:
        try:
            await sub.unsubscribe()
        except Exception:
            log.debug("removing the reading consumer of %s/%s failed", tenant, job, exc_info=True)
    return BusLines(lines)


def as_file_line(message: bytes) -> bytes:
    """One bus message as a line of an OpenAI batch input file.

    A ``BulkLine`` (``custom_id``, ``body``) becomes ``{custom_id, method, url, body}``; an object
    missing either keeps it missing (the line then fails naming it); anything that is not a JSON
    object is kept as it came, on one line, so that it fails as ``invalid_json_line``."""
    try:
        data = json.loads(message)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return message.replace(b"\r", b" ").replace(b"\n", b" ") or b"?"
    if not isinstance(data, dict):
        return json.dumps(data, separators=(",", ":")).encode()
    line: dict[str, object] = {"method": "POST", "url": CHAT_ENDPOINT}
    for name in ("custom_id", "body"):
        if name in data:
            line[name] = data[name]
    return json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode()


async def write_bus_input(files: FileStore, tenant: str, job: str, batch_id: str, lines: BusLines) -> str:
    """The bus job's input file (written once); returns its id."""
    data = b"".join(as_file_line(m) + b"\n" for m in lines.lines)
    stored = await files.put(tenant, f"{job}.jsonl", FilePurpose.BATCH, data, requests=len(lines.lines),
                             file_id=bus_input_file_id(batch_id))
    return stored.id


async def read_items(files: FileStore, tenant: str, file_id: str, limits: InputLimits,
                     model: str | None = None) -> list[LineResult]:
    """Every request of the input file, checked (``lines.parse_file``). Raises ``FileRejected`` /
    ``FileTooLarge`` for a file-wide problem (empty, too many requests, too large)."""
    data = await files.read(tenant, file_id)
    scan([data], limits)
    return list(parse_file([data], limits, model=model))
