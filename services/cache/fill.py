"""Which answers the cache may learn: only whole, successful, reproducible ones (issue 12, item 4).

A cached answer is replayed to every later asker with the same key, so what is stored must be an
answer the model would give again and that the first asker received in full. The rule, in the
order it is checked (the first that applies is the reason):

- ``skipped``: the request asked not to be stored (a per-request header, item 5).
- ``error``: the stage answered with an error: replaying it would turn a blip into an outage.
- ``partial``: no final answer came (the stream broke off): the text is only a prefix.
- ``cancelled``: the client went away, or the engine aborted (``finish_reason: abort``).
- ``truncated``: ``finish_reason: length``: cut short by ``max_tokens`` (JSON incomplete, too).
- ``sampled``: the request was sampled (temperature above 0, or unset: the engine's default is
  1.0), so another asker would get another answer; stored only when the tenant opts in. A
  temperature of 0 is greedy whatever ``top_p`` says.
- ``ok``: stored.

Plain logic: no bus, no framework. The reason is a metric label and a log field, so the set is
small and fixed (:class:`FillReason`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from contracts.v1 import ChatRequest, ErrorReply, Final

#: The temperature the worker samples at when a request sets none (``services/worker/engine.py``).
ENGINE_DEFAULT_TEMPERATURE = 1.0


class FillReason(StrEnum):
    """Why an answer was (``ok``) or was not stored; the values are metric label values."""

    OK = "ok"
    SKIPPED = "skipped"
    ERROR = "error"
    PARTIAL = "partial"
    CANCELLED = "cancelled"
    TRUNCATED = "truncated"
    SAMPLED = "sampled"


@dataclass(frozen=True)
class Cacheable:
    """The decision: store (``ok``) or not, and why."""

    ok: bool
    reason: FillReason


def is_sampled(request: ChatRequest) -> bool:
    """Whether the engine samples this request's answer (two runs may differ), rather than
    taking the most likely token each step."""
    temperature = ENGINE_DEFAULT_TEMPERATURE if request.temperature is None else request.temperature
    return temperature > 0.0


def may_store(
    request: ChatRequest,
    reply: Final | ErrorReply | None,
    *,
    cancelled: bool = False,
    allow_sampled: bool = False,
    skip_store: bool = False,
) -> Cacheable:
    """Whether the cache may learn ``reply`` as the answer to ``request``.

    ``reply`` is how the request ended: its ``Final``, its ``ErrorReply``, or ``None`` when the
    stream ended without either. ``cancelled`` is true when the client went away before the
    answer was delivered, even if a ``Final`` arrived afterwards. ``allow_sampled`` is the
    tenant's opt-in to caching sampled answers; ``skip_store`` the request's own opt-out.
    """
    if skip_store:
        return _no(FillReason.SKIPPED)
    if isinstance(reply, ErrorReply):
        return _no(FillReason.ERROR)
    if reply is None:
        return _no(FillReason.PARTIAL)
    if cancelled or reply.finish_reason == "abort":
        return _no(FillReason.CANCELLED)
    if reply.finish_reason == "length":
        return _no(FillReason.TRUNCATED)
    if is_sampled(request) and not allow_sampled:
        return _no(FillReason.SAMPLED)
    return Cacheable(ok=True, reason=FillReason.OK)


def _no(reason: FillReason) -> Cacheable:
    return Cacheable(ok=False, reason=reason)
