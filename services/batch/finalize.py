"""A finished job's output and error files, rebuilt from its input and its stored results.

Everything is derived from what is stored: the input file (each line's ``custom_id``, and the
lines refused on reading) and the item results (``JobStore.items``). So finalizing again after a
crash writes the same files, and the files' ids are the job's own (``file-<batch>-output``,
``file-<batch>-errors``), written once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import ValidationError

from contracts.v1 import REPLY_ADAPTER, ErrorReply, Final
from services.batch.files import FilePurpose
from services.batch.job import BatchJob
from services.batch.lines import LineError, LineResult
from services.batch.output import Unrun, from_reply, jsonl, line_failed, unrun
from services.batch.store import FileStore


def item_record(reply: Final | ErrorReply, created: int) -> bytes:
    """What the item store keeps for an item's result: the reply and when it was stored."""
    return json.dumps({"created": created, "reply": json.loads(reply.model_dump_json())},
                      separators=(",", ":")).encode()


def read_record(value: bytes) -> tuple[Final | ErrorReply, int]:
    """An item record back; ``ValueError`` when it is unreadable."""
    try:
        data = json.loads(value)
        reply = REPLY_ADAPTER.validate_python(data["reply"])
        created = int(data["created"])
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise ValueError(f"an unreadable item record: {exc}") from exc
    if not isinstance(reply, Final | ErrorReply):
        raise ValueError(f"an item record holds a {reply.kind!r} reply")
    return reply, created


@dataclass(frozen=True)
class Files:
    output: bytes
    errors: bytes
    answered: int
    failed: int


def build(batch_id: str, items: list[LineResult], recorded: dict[int, bytes], unrun_as: Unrun) -> Files:
    """The output file (answers) and the error file (everything else) in input order: a refused
    line as it was refused, a stored result as its reply, an item with neither as ``unrun_as``."""
    output: list[bytes] = []
    errors: list[bytes] = []
    for item in items:
        if isinstance(item, LineError):
            errors.append(jsonl(line_failed(batch_id, item)))
            continue
        value = recorded.get(item.index)
        if value is None:
            errors.append(jsonl(unrun(batch_id, item.index, item.custom_id, unrun_as)))
            continue
        reply, created = read_record(value)
        line = from_reply(batch_id, item.index, item.custom_id, reply, created)
        (output if line.succeeded else errors).append(jsonl(line))
    return Files(b"".join(output), b"".join(errors), len(output), len(errors))


async def write(files: FileStore, job: BatchJob, built: Files, now: float,
                expiry_s: int) -> tuple[str | None, str | None]:
    """Store the files that have lines (OpenAI leaves an empty one out); returns their ids."""
    expires_at = int(now) + expiry_s
    ids: list[str | None] = []
    for kind, data, purpose in (("output", built.output, FilePurpose.BATCH_OUTPUT),
                                ("errors", built.errors, FilePurpose.BATCH_OUTPUT)):
        if not data:
            ids.append(None)
            continue
        stored = await files.put(job.tenant, f"{job.id}_{kind}.jsonl", purpose, data, expires_at,
                                 requests=data.count(b"\n"), now=now, file_id=f"file-{job.id}-{kind}")
        ids.append(stored.id)
    return ids[0], ids[1]
