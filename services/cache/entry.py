"""What the exact cache stores for one answer: a small, versioned JSON entry.

The entry is a stored format, not a wire message, but it follows the same rule: within
``ENTRY_VERSION`` only optional fields with defaults are added (unknown fields are ignored, so an
older reader skips what a newer writer added); anything else bumps the version, and a reader
treats an entry of another version as a miss. Plain logic: no bus.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.v1 import CacheNote, CacheOutcome, Final, TokenUsage
from services.shared.canonical import FORM_VERSION
from services.shared.validation import summary

#: The version of this entry format; bumped on any change an older reader would misread.
ENTRY_VERSION = 1


class ExactEntry(BaseModel):
    """One cached answer, with what a hit needs to replay and charge it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    v: int = Field(default=ENTRY_VERSION, description="Entry format version (ENTRY_VERSION).")
    form_version: int = Field(default=FORM_VERSION, description="Canonical form version the key was built on.")
    tenant: str = Field(min_length=1, description="Tenant the answer belongs to (checked on read).")
    text: str = Field(description="The whole answer.")
    finish_reason: Literal["stop", "length", "abort"] = Field(description="Why generation ended.")
    usage: TokenUsage = Field(description="Tokens the original answer cost (a hit saves them).")
    model: str = Field(description="Public model name that answered.")
    tier: str = Field(description="Tier that produced it (prices what a hit saves).")
    created_at: float = Field(description="Unix time the answer was stored.")
    expires_at: float = Field(description="Unix time after which it is never served.")
    tags: tuple[str, ...] = Field(default=(), description="Invalidation tags, e.g. 'kb:v3'.")


def entry_from_final(
    final: Final, *, tenant: str, created_at: float, ttl_s: float, tags: tuple[str, ...] = ()
) -> ExactEntry:
    """The entry for ``final`` (which :func:`services.cache.fill.may_store` has let through)."""
    return ExactEntry(
        tenant=tenant, text=final.text, finish_reason=final.finish_reason, usage=final.usage,
        model=final.model, tier=final.tier, created_at=created_at, expires_at=created_at + ttl_s,
        tags=tags,
    )


def served_answer(entry: ExactEntry, request_id: str, *, served_by: str, now: float, kind: CacheOutcome,
                  similarity: float | None = None, score: float | None = None) -> Final:
    """``entry`` as the final reply to request ``request_id``: no model tokens were used, and its
    note says how it matched and what the answer had cost when a model made it."""
    note = CacheNote(
        outcome=kind, similarity=similarity, score=score, age_s=max(0.0, now - entry.created_at),
        source_tier=entry.tier, source_prompt_tokens=entry.usage.prompt_tokens,
        source_completion_tokens=entry.usage.completion_tokens,
    )
    return Final(request_id=request_id, text=entry.text, finish_reason=entry.finish_reason,
                 usage=TokenUsage(prompt_tokens=0, completion_tokens=0), model=entry.model,
                 tier=entry.tier, served_by=served_by, cache=note)


def encode(entry: ExactEntry) -> bytes:
    return entry.model_dump_json().encode()


class MalformedEntry(ValueError):
    """A stored value that is not an entry this code can read; the message says why."""


def decode(data: bytes) -> ExactEntry:
    """The entry in ``data``; :class:`MalformedEntry` (naming the problem) if it is not one of
    ``ENTRY_VERSION``."""
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedEntry(f"not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise MalformedEntry(f"not a JSON object but {type(raw).__name__}")
    if raw.get("v") != ENTRY_VERSION:
        raise MalformedEntry(f"entry version {raw.get('v')!r}, this reader knows {ENTRY_VERSION}")
    try:
        return ExactEntry.model_validate(raw)
    except ValidationError as exc:
        raise MalformedEntry(summary(exc)) from exc
