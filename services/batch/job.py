"""A batch job and its life, as OpenAI's Batch object reports it.

States (OpenAI's): ``validating`` (the input file is being checked) -> ``in_progress`` (its
requests run) -> ``finalizing`` (all finished; the output and error files are being written) ->
``completed``. From ``validating``: ``failed`` when the file as a whole is refused. Cancelling
(from ``validating`` or ``in_progress``): ``cancelling`` while requests already running finish,
then ``cancelled``. When the completion window passes first: ``expired``. Finished requests are
kept in every case; those never run go to the error file (``batch_cancelled`` or
``batch_expired``) and count as failed, so that ``failed`` is always the error file's length.

Items are the file's requests, numbered 0..total-1 (``lines``' ``index``). The job keeps the set
of finished items, never a bare counter: recording an item's result twice (a redelivery) changes
nothing, so counts, usage and the state never double count. Transitions are plain methods that take
``now`` (Unix seconds) and do no I/O; an illegal one raises ``WrongState`` and changes nothing.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from contracts.v1 import TokenUsage
from services.batch.lines import CHAT_ENDPOINT
from services.shared.errors import BadRequest, SkinflintError

#: OpenAI's metadata limits.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TERMINAL = frozenset({BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED})
#: While items may still finish (a result arriving in any other state is late and ignored).
_RECORDING = frozenset({BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING})


class WrongState(SkinflintError):
    """The job's state does not allow this (e.g. cancelling a completed batch)."""

    status = 409
    code = "invalid_batch_state"


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


def parse_window(window: Any, max_hours: int = 168) -> int:
    """``completion_window`` in seconds. OpenAI accepts only ``"24h"``; skinflint also takes any
    whole number of hours from 1 to ``max_hours`` (``"4h"``, ``"72h"``), as the SDK sends it
    unchanged. Raises a 400 naming ``completion_window``."""
    match = re.fullmatch(r"([1-9][0-9]*)h", window) if isinstance(window, str) else None
    if match is None or int(match.group(1)) > max_hours:
        raise BadRequest(f"completion_window: {window!r} is not supported; use \"24h\" (or a whole number of "
                         f"hours from 1h to {max_hours}h)", param="completion_window", code="invalid_value")
    return int(match.group(1)) * 3600


def check_metadata(metadata: Any) -> dict[str, str]:
    """OpenAI's rules: at most 16 pairs, string keys of at most 64 characters, string values of at
    most 512. Raises a 400 naming the field at fault."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise BadRequest("metadata must be an object of string keys and values", param="metadata")
    if len(metadata) > MAX_METADATA_PAIRS:
        raise BadRequest(f"metadata has {len(metadata)} pairs; at most {MAX_METADATA_PAIRS} are allowed",
                         param="metadata")
    for key, value in metadata.items():
        if not isinstance(key, str) or len(key) > MAX_METADATA_KEY:
            raise BadRequest(f"metadata: the key {str(key)[:80]!r} is longer than {MAX_METADATA_KEY} characters",
                             param="metadata")
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
            raise BadRequest(f"metadata.{key}: the value must be a string of at most {MAX_METADATA_VALUE} "
                             "characters", param=f"metadata.{key}")
    return dict(metadata)


class FileError(BaseModel):
    """Why the input file as a whole was refused (an entry of the Batch object's ``errors.data``)."""

    code: str = Field(description="`empty_file`, `too_many_tasks`, `file_too_large`, ...")
    message: str = Field(description="What was wrong and what to do.")
    line: int | None = Field(default=None, description="The input line at fault, if one is.")
    param: str | None = Field(default=None, description="The field at fault, if one is.")


class TokenTotals(BaseModel):
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class Progress:
    """Where a job stands at ``now``: counts, throughput (requests run per second since it started,
    requests refused at reading excluded) and the time left at that rate (None: not yet known)."""

    total: int
    completed: int
    failed: int
    pending: int
    elapsed_s: float
    per_second: float | None
    eta_s: float | None


class BatchJob(BaseModel):
    """One batch job: what OpenAI's Batch object shows, plus the tenant and the finished items.

    Invariants: ``completed`` and ``failed`` are disjoint sets of item numbers in ``range(total)``;
    ``unread`` (items refused when their line was read) and ``unrun`` (items never run: expired or
    cancelled) are subsets of ``failed``; in ``completed``, ``expired`` and ``cancelled`` every item
    is in one of the two sets; ``usage`` adds each answered item's tokens once.
    """

    # A record stored and read back by other versions of the service: unknown fields are ignored.
    model_config = ConfigDict(extra="ignore")

    id: str
    tenant: str
    endpoint: str = CHAT_ENDPOINT
    input_file_id: str
    completion_window: str = "24h"
    metadata: dict[str, str] = Field(default_factory=dict)
    model: str | None = Field(default=None, description="The model every request names, once known.")
    bus_job: str | None = Field(default=None, description="A job that came over the bus: its subject token (the "
                                "tenant reads its results live on public_bulk_output_subject(tenant, bus_job)).")
    api_key_id: str = Field(default="", description="The API key that created it (recorded with each charge).")
    output_expires_after_s: int | None = Field(
        default=None, description="How long its output and error files are kept (output_expires_after.seconds); "
        "None: the batch service's default.")
    status: BatchStatus = BatchStatus.VALIDATING
    created_at: int
    expires_at: int
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[FileError] = Field(default_factory=list)
    total: int = Field(default=0, ge=0)
    completed: set[int] = Field(default_factory=set)
    failed: set[int] = Field(default_factory=set)
    unread: set[int] = Field(default_factory=set)
    unrun: set[int] = Field(default_factory=set)
    usage: TokenTotals = Field(default_factory=TokenTotals)

    @classmethod
    def create(cls, *, tenant: str, input_file_id: str, now: float, endpoint: str = CHAT_ENDPOINT,
               completion_window: Any = "24h", metadata: Any = None, max_window_hours: int = 168,
               batch_id: str | None = None) -> BatchJob:
        """A new job in ``validating``, its create request checked (400s naming the field)."""
        if endpoint != CHAT_ENDPOINT:
            raise BadRequest(f"endpoint: skinflint runs batches on {CHAT_ENDPOINT!r} only, not {endpoint!r}",
                             param="endpoint", code="invalid_value")
        window_s = parse_window(completion_window, max_window_hours)
        return cls(id=batch_id or new_batch_id(), tenant=tenant, endpoint=endpoint, input_file_id=input_file_id,
                   completion_window=completion_window, metadata=check_metadata(metadata), created_at=int(now),
                   expires_at=int(now) + window_s)

    # -- counts ----------------------------------------------------------------------------------

    @property
    def finished(self) -> int:
        return len(self.completed) + len(self.failed)

    @property
    def all_finished(self) -> bool:
        return self.total > 0 and self.finished == self.total

    def pending(self) -> list[int]:
        """Items with no result yet, in file order."""
        return [i for i in range(self.total) if i not in self.completed and i not in self.failed]

    # -- transitions -----------------------------------------------------------------------------

    def _require(self, action: str, *allowed: BatchStatus) -> None:
        if self.status not in allowed:
            raise WrongState(f"cannot {action} batch {self.id}: its status is {self.status.value!r}")

    def start(self, now: float, total: int) -> None:
        """The file passed the file-wide checks and holds ``total`` requests: they start running."""
        self._require("start", BatchStatus.VALIDATING)
        if total < 1:
            raise ValueError("a batch runs at least one request")
        self.total, self.status, self.in_progress_at = total, BatchStatus.IN_PROGRESS, int(now)

    def fail(self, now: float, errors: list[FileError]) -> None:
        """The file as a whole was refused: nothing runs, ``errors`` say why."""
        self._require("fail", BatchStatus.VALIDATING)
        self.errors, self.status, self.failed_at = list(errors), BatchStatus.FAILED, int(now)

    def record(self, index: int, ok: bool, now: float, usage: TokenUsage | None = None) -> bool:
        """Item ``index`` finished: answered (``ok``, goes to the output file) or failed (error file).

        Returns whether this changed anything: False for an item already finished (a redelivered
        result: its first outcome and usage stand) and for a late result once the job is
        finalizing or over. The last item moves an in-progress job to ``finalizing``."""
        if not 0 <= index < self.total:
            raise ValueError(f"item {index} is not in batch {self.id} (0..{self.total - 1})")
        if self.status not in _RECORDING or index in self.completed or index in self.failed:
            return False
        (self.completed if ok else self.failed).add(index)
        if ok and usage is not None:
            self.usage.input_tokens += usage.prompt_tokens
            self.usage.cached_tokens += usage.cached_prompt_tokens
            self.usage.output_tokens += usage.completion_tokens
        if self.status == BatchStatus.IN_PROGRESS and self.all_finished:
            self.status, self.finalizing_at = BatchStatus.FINALIZING, int(now)
        return True

    def record_unread(self, index: int, now: float) -> bool:
        """Item ``index``'s line was refused when read (``lines.LineError``): failed, never run."""
        changed = self.record(index, False, now)
        if changed:
            self.unread.add(index)
        return changed

    def cancel(self, now: float) -> None:
        """Stop: pending items will not run; finished ones are kept. Cancelling twice is harmless."""
        if self.status == BatchStatus.CANCELLING:
            return
        self._require("cancel", BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)
        self.status, self.cancelling_at = BatchStatus.CANCELLING, int(now)

    def due(self, now: float) -> bool:
        """Whether the completion window has passed with requests still to run."""
        return self.status in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS) and now >= self.expires_at

    def complete(self, now: float, output_file_id: str | None, error_file_id: str | None) -> None:
        """The files are written: ``finalizing`` -> ``completed``."""
        self._require("complete", BatchStatus.FINALIZING)
        self._close(BatchStatus.COMPLETED, output_file_id, error_file_id)
        self.completed_at = int(now)

    def finish_cancel(self, now: float, output_file_id: str | None, error_file_id: str | None) -> None:
        """``cancelling`` -> ``cancelled``: the items still pending (``pending()``, written to the
        error file as ``batch_cancelled``) count as failed."""
        self._require("finish cancelling", BatchStatus.CANCELLING)
        self._close(BatchStatus.CANCELLED, output_file_id, error_file_id)
        self.cancelled_at = int(now)

    def expire(self, now: float, output_file_id: str | None, error_file_id: str | None) -> None:
        """The window passed (``due``): the items still pending (written as ``batch_expired``) count
        as failed; a result arriving later is ignored."""
        if not self.due(now):
            raise WrongState(f"batch {self.id} cannot expire: status {self.status.value!r}, expires at "
                             f"{self.expires_at}")
        self._close(BatchStatus.EXPIRED, output_file_id, error_file_id)
        self.expired_at = int(now)

    def _close(self, status: BatchStatus, output_file_id: str | None, error_file_id: str | None) -> None:
        never_ran = set(self.pending())
        self.failed |= never_ran
        self.unrun |= never_ran
        self.status, self.output_file_id, self.error_file_id = status, output_file_id, error_file_id

    # -- reporting -------------------------------------------------------------------------------

    def progress(self, now: float) -> Progress:
        """Counts, throughput and ETA at ``now``. The rate counts only requests that ran (not lines
        refused on reading, nor items closed unrun) over the time since the job started."""
        pending = self.total - self.finished
        ran = self.finished - len(self.unread) - len(self.unrun)
        started = self.in_progress_at
        end = next((t for t in (self.finalizing_at, self.cancelled_at, self.expired_at) if t is not None), None)
        elapsed = 0.0 if started is None else max(0.0, (end if end is not None else now) - started)
        rate = ran / elapsed if ran > 0 and elapsed > 0 else None
        if self.status == BatchStatus.VALIDATING:
            eta: float | None = None  # its size is not known yet
        elif pending == 0 or self.status in TERMINAL:
            eta = 0.0
        elif rate is None or self.status == BatchStatus.CANCELLING:
            eta = None
        else:
            eta = pending / rate
        return Progress(total=self.total, completed=len(self.completed), failed=len(self.failed), pending=pending,
                        elapsed_s=elapsed, per_second=rate, eta_s=eta)

    def to_openai(self) -> dict[str, Any]:
        """The Batch object as OpenAI's API returns it (``openai.types.Batch`` parses it)."""
        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint, "model": self.model,
            "errors": None if not self.errors else {
                "object": "list", "data": [e.model_dump() for e in self.errors]},
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status.value, "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": self.created_at, "in_progress_at": self.in_progress_at, "expires_at": self.expires_at,
            "finalizing_at": self.finalizing_at, "completed_at": self.completed_at, "failed_at": self.failed_at,
            "expired_at": self.expired_at, "cancelling_at": self.cancelling_at, "cancelled_at": self.cancelled_at,
            "request_counts": {"total": self.total, "completed": len(self.completed), "failed": len(self.failed)},
            "usage": {
                "input_tokens": self.usage.input_tokens,
                "input_tokens_details": {"cached_tokens": self.usage.cached_tokens},
                "output_tokens": self.usage.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.usage.input_tokens + self.usage.output_tokens,
            },
            "metadata": dict(self.metadata),
        }
