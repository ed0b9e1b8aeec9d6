"""What a request lets the cache do, from its headers (HTTP) or its frame (WebSocket), merged with
the tenant's policy; and what the response says the cache did. Plain logic.

Request headers (HTTP's own ``Cache-Control`` directives, with their usual meaning):

- ``Cache-Control: no-cache``: do not answer from the cache (the answer is still learnt).
- ``Cache-Control: no-store``: do not learn this answer.
- ``Cache-Control: max-age=N``: answer only from an entry at most N seconds old.
- ``X-Skinflint-Cache-TTL: N``: keep this answer N seconds (capped by the stage's maximum).
- ``X-Skinflint-Cache-Tags: kb:v3, docs``: invalidation tags for this answer.

The WebSocket frame takes the same as ``"cache": {"lookup": false, "store": false,
"max_age_s": N, "ttl_s": N, "tags": [...]}``.

Response headers: ``X-Skinflint-Cache: exact|semantic|miss|bypass|skipped`` and, for a semantic
hit, ``X-Skinflint-Cache-Similarity`` (cosine, 4 decimals); in shadow mode
``X-Skinflint-Cache-Shadow`` says what would have been served.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.v1 import CacheControl, CacheNote
from services.ingress.tenants import TenantCache
from services.shared.errors import BadRequest
from services.shared.validation import problems

MAX_TAGS = 16
_TAG = re.compile(r"^[A-Za-z0-9_.:/=-]{1,64}$")


def _seconds(value: str, header: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise BadRequest(f"{header}: {value!r} is not a number of seconds", param=header) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise BadRequest(f"{header}: {value!r} must be a finite number of seconds, 0 or more", param=header)
    return seconds


def check_tag(tag: str, where: str) -> str:
    """``tag``, or a 400 naming ``where`` when it is not one an answer can be stored with."""
    if not _TAG.match(tag):
        raise BadRequest(f"{where}: tag {tag[:70]!r} must be 1-64 characters of letters, digits and "
                         "_ . : / = -", param=where)
    return tag


def _tags(values: list[str], where: str) -> list[str]:
    tags = [t for t in (v.strip() for v in values) if t]
    if len(tags) > MAX_TAGS:
        raise BadRequest(f"{where}: at most {MAX_TAGS} tags, got {len(tags)}", param=where)
    return [check_tag(tag, where) for tag in tags]


def _merge(policy: TenantCache, *, lookup: bool, store: bool, max_age_s: float | None, ttl_s: float | None,
           tags: list[str]) -> CacheControl:
    return CacheControl(mode=policy.mode, lookup=lookup, store=store, max_age_s=max_age_s,
                        ttl_s=ttl_s if ttl_s is not None else policy.ttl_s, tags=tags,
                        store_sampled=policy.store_sampled)


def from_headers(headers: Mapping[str, str], policy: TenantCache) -> CacheControl:
    """The request's cache control; a malformed header is a 400 naming it."""
    lookup, store, max_age = True, True, None
    for directive in (d.strip().lower() for d in headers.get("cache-control", "").split(",")):
        if not directive:
            continue
        name, _, value = directive.partition("=")
        name = name.strip()
        if name == "no-cache":
            lookup = False
        elif name == "no-store":
            store = False
        elif name == "max-age":
            max_age = _seconds(value.strip().strip('"'), "Cache-Control: max-age")
        # Other directives (no-transform, ...) say nothing to this cache: ignored, as HTTP caches do.
    ttl = headers.get("x-skinflint-cache-ttl")
    ttl_s = _seconds(ttl, "X-Skinflint-Cache-TTL") if ttl is not None else None
    if ttl_s == 0:
        raise BadRequest("X-Skinflint-Cache-TTL: must be more than 0 (use Cache-Control: no-store to keep "
                         "nothing)", param="X-Skinflint-Cache-TTL")
    tags = _tags(headers.get("x-skinflint-cache-tags", "").split(","), "X-Skinflint-Cache-Tags")
    return _merge(policy, lookup=lookup, store=store, max_age_s=max_age, ttl_s=ttl_s, tags=tags)


class _FrameCache(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lookup: bool = True
    store: bool = True
    max_age_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    ttl_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    tags: list[str] = Field(default_factory=list)


def default(policy: TenantCache) -> CacheControl:
    """The cache control of a request that says nothing about the cache: the tenant's policy."""
    return _merge(policy, lookup=True, store=True, max_age_s=None, ttl_s=None, tags=[])


def from_frame(value: Any, policy: TenantCache) -> CacheControl:
    """The cache control of a WebSocket frame's ``cache`` object (absent: defaults)."""
    if value is None:
        return default(policy)
    try:
        frame = _FrameCache.model_validate(value)
    except ValidationError as exc:
        path, reason = problems(exc)[0]
        where = f"cache.{path}" if path else "cache"
        raise BadRequest(f"{where}: {reason}", param=where) from exc
    return _merge(policy, lookup=frame.lookup, store=frame.store, max_age_s=frame.max_age_s, ttl_s=frame.ttl_s,
                  tags=_tags(frame.tags, "cache.tags"))


def response_headers(note: CacheNote | None) -> dict[str, str]:
    """What the response tells the client about the cache (nothing when the stage is off)."""
    if note is None:
        return {}
    headers = {"x-skinflint-cache": note.outcome.value}
    if note.similarity is not None:
        headers["x-skinflint-cache-similarity"] = f"{note.similarity:.4f}"
    if note.shadow != "none":
        headers["x-skinflint-cache-shadow"] = note.shadow
    return headers
