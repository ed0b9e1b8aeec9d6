"""Pydantic validation errors as people read them: "field.path: reason", written once.

Used for request bodies (400s), config files and environment settings (start-up errors), and
messages refused on the bus (logs). Plain logic: no framework imports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pydantic import ValidationError

#: Location parts that only say where a value came from, not which field it is.
_SOURCES = frozenset({"body", "query", "header", "path"})


def field_path(loc: Iterable[int | str], rename: Callable[[str], str] | None = None) -> str:
    """``("messages", 0, "role")`` as ``messages.0.role``; ``rename`` spells the top-level name
    (e.g. as its environment variable)."""
    parts = [str(p) for p in loc if p not in _SOURCES]
    if parts and rename is not None:
        parts[0] = rename(parts[0])
    return ".".join(parts)


def problems(exc: ValidationError, rename: Callable[[str], str] | None = None) -> list[tuple[str, str]]:
    """Every problem as (field path, reason); the path is empty for the whole value."""
    found = []
    for err in exc.errors(include_url=False, include_input=False):
        reason = err["msg"].removeprefix("Value error, ")
        found.append((field_path(err["loc"], rename), reason))
    return found


def summary(exc: ValidationError, *, limit: int = 5, rename: Callable[[str], str] | None = None,
            whole: str = "<root>") -> str:
    """Up to ``limit`` problems joined by "; ", each "path: reason" (``whole`` names an empty path)."""
    found = problems(exc, rename)
    shown = "; ".join(f"{path or whole}: {reason}" for path, reason in found[:limit])
    more = len(found) - limit
    return shown + (f" (and {more} more)" if more > 0 else "")
