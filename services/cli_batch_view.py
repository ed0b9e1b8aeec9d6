"""How ``skinflint batch`` shows a batch: where it stands (counts, rate, ETA) and its table."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from openai.types import Batch

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(frozen=True)
class Figures:
    """Where a batch stands: skinflint's own ``skinflint.progress`` when the object has it (the
    batch service's figures: only requests that ran count in the rate), else worked out from the
    standard fields."""

    total: int
    completed: int
    failed: int
    per_second: float | None
    eta_s: float | None
    elapsed_s: float | None

    @property
    def done(self) -> int:
        return self.completed + self.failed


def figures(batch: Batch, now: float) -> Figures:
    counts = batch.request_counts
    total, completed, failed = (counts.total, counts.completed, counts.failed) if counts else (0, 0, 0)
    extra = _skinflint_progress(batch)
    if extra is not None:
        return Figures(total, completed, failed, _number(extra.get("per_second")), _number(extra.get("eta_s")),
                       _number(extra.get("elapsed_s")))
    if batch.in_progress_at is None:
        return Figures(total, completed, failed, None, None, None)
    ended = next((t for t in (batch.finalizing_at, batch.cancelled_at, batch.expired_at, batch.completed_at,
                                  batch.failed_at)
                  if t is not None), None)
    elapsed = max(0.0, (ended if ended is not None else now) - batch.in_progress_at)
    rate = (completed + failed) / elapsed if elapsed > 0 and completed + failed > 0 else None
    pending = total - completed - failed
    eta = 0.0 if batch.status in TERMINAL or pending <= 0 else (pending / rate if rate else None)
    return Figures(total, completed, failed, rate, eta, elapsed)


def _skinflint_progress(batch: Batch) -> dict[str, Any] | None:
    """The batch's ``skinflint.progress`` (ingress sends ``{"skinflint": {"progress": {...}}}``;
    the SDK keeps unknown keys in ``model_extra``)."""
    extra = batch.model_extra or {}
    nested = extra.get("skinflint")
    progress = nested.get("progress") if isinstance(nested, dict) else extra.get("skinflint.progress")
    return progress if isinstance(progress, dict) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def rate_text(per_second: float | None) -> str:
    return "- req/s" if per_second is None else f"{per_second:.2f} req/s"


def when(ts: int | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


def batch_table(batch: Batch, cost: tuple[Decimal, Decimal] | None, files: dict[str, str] | None = None) -> Table:
    f = figures(batch, time.time())
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows: list[tuple[str, str]] = [
        ("batch", batch.id), ("status", batch.status), ("model", batch.model or "-"),
        ("requests", f"{f.total} total, {f.completed} completed, {f.failed} failed, "
                     f"{max(0, f.total - f.done)} pending"),
        ("rate", rate_text(f.per_second)), ("elapsed", duration(f.elapsed_s)), ("eta", duration(f.eta_s)),
        ("created", when(batch.created_at)), ("expires", when(batch.expires_at)),
        ("input file", batch.input_file_id), ("output file", batch.output_file_id or "-"),
        ("error file", batch.error_file_id or "-"),
    ]
    if batch.usage is not None:
        u = batch.usage
        rows.append(("tokens", f"{u.input_tokens} in ({u.input_tokens_details.cached_tokens} cached), "
                               f"{u.output_tokens} out"))
    if cost is not None:
        spent, reference = cost
        saved = f", saved {(1 - spent / reference) * 100:.1f}%" if reference > 0 else ""
        rows.append(("cost", f"${spent:.6f} (without skinflint ${reference:.6f}{saved})"))
    if batch.metadata:
        rows.append(("metadata", ", ".join(f"{k}={v}" for k, v in batch.metadata.items())))
    for error in (batch.errors.data or [])[:5] if batch.errors else []:
        where = f"line {error.line}: " if error.line is not None else ""
        rows.append(("error", f"{where}{error.code}: {error.message}"))
    rows += list((files or {}).items())
    for name, value in rows:
        table.add_row(name, Text(value))
    return table
