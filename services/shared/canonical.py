"""One canonical form of a chat request: what changes the answer, written one way.

The exact cache keys on it (with the tenant), the semantic cache partitions on it, and retrieval
and prefix-aware worker choice will reuse it, so that two requests that must get the same
answer serialize to the same bytes and two that may not, never do. Plain logic: no framework.

What it keeps: the model, every message (role and text, in order), the sampling parameters
(temperature, top_p, the token limit, stop sequences, seed, penalties), ``response_format``
(schemas included), and tools. What it drops: what does not change the answer (``stream``,
``stream_options``, ``user`` and OpenAI's other no-effect fields, which never reach the
``ChatRequest``). How it writes: JSON with sorted keys and no spaces, text normalised (below),
``None`` left out, stop sequences as a sorted set (each kept exactly: they match the output
literally). Unset and explicitly default parameters stay
distinct: that can only cost a hit, never give a wrong one.

Text normalisation is deliberately conservative, since two prompts it merges share one answer:
Unicode NFC (canonical equivalence: the same characters, however encoded), line endings as
``\\n``, no whitespace at the end of a line or around the whole text, and runs of spaces or
tabs inside a line as one space. Indentation at the start of a line is kept (it is meaning in
code), and so are blank lines.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any

from contracts.v1 import ChatRequest

#: Bumped whenever the canonical form changes, so keys written by an older form never match.
FORM_VERSION = 1

_INNER_SPACE = re.compile(r"(?<=\S)[ \t]+(?=\S)")


def normalise_text(text: str) -> str:
    """``text`` as the canonical form writes it (see the module docstring)."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [_INNER_SPACE.sub(" ", line.rstrip()) for line in text.split("\n")]
    return "\n".join(lines).strip()


def _normalise_json(value: Any) -> Any:
    """Strings inside tools and schemas are normalised like message text; keys are sorted when dumped."""
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, dict):
        return {unicodedata.normalize("NFC", str(k)): _normalise_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise_json(v) for v in value]
    return value


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def sampling(req: ChatRequest) -> dict[str, Any]:
    """The parameters that change the answer, apart from the conversation."""
    response_format = None
    if req.response_format is not None:
        response_format = _drop_none({
            "type": req.response_format.type,
            "schema": _normalise_json(req.response_format.schema_constraint),
        })
    return _drop_none({
        "model": req.model,
        "max_tokens": req.token_limit,
        "temperature": req.temperature,
        "top_p": req.top_p,
        # Matched literally against the output: kept as sent (only their order is not meaning).
        "stop": sorted(set(req.stop_list)) or None,
        "seed": req.seed,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "response_format": response_format,
        "tools": _normalise_json(req.tools) or None,
    })


def messages(req: ChatRequest, *, without_last_user_text: bool = False) -> list[dict[str, str]]:
    """The conversation as (role, normalised text) pairs; optionally with the last user turn's
    text left out (its role stays, so a conversation ending elsewhere never matches)."""
    turns = [{"role": m.role, "content": normalise_text(m.content)} for m in req.messages]
    if without_last_user_text:
        last = last_user_index(req)
        if last is not None:
            turns[last] = {"role": "user", "content": ""}
    return turns


def last_user_index(req: ChatRequest) -> int | None:
    for i in range(len(req.messages) - 1, -1, -1):
        if req.messages[i].role == "user":
            return i
    return None


def last_user_text(req: ChatRequest) -> str:
    """The wording the semantic cache compares (normalised); empty when no user turn exists."""
    last = last_user_index(req)
    return "" if last is None else normalise_text(req.messages[last].content)


def canonical_form(req: ChatRequest) -> dict[str, Any]:
    """Everything that changes the answer, as a JSON-able value."""
    return {"v": FORM_VERSION, "params": sampling(req), "messages": messages(req)}


def dumps(value: Any) -> bytes:
    """The one way a canonical value becomes bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_bytes(req: ChatRequest) -> bytes:
    return dumps(canonical_form(req))


def _hash(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))  # length-prefixed: no two splits hash alike
        digest.update(part)
    return digest.hexdigest()


def exact_key(tenant: str, req: ChatRequest) -> str:
    """The exact cache's key: the tenant and the whole canonical request."""
    return _hash(tenant.encode(), canonical_bytes(req))


def partition_key(tenant: str, req: ChatRequest) -> str:
    """The semantic cache's partition: the tenant and everything but the last user turn's
    wording, so only requests that differ in that wording alone are ever compared."""
    rest = {"v": FORM_VERSION, "params": sampling(req), "messages": messages(req, without_last_user_text=True)}
    return _hash(tenant.encode(), dumps(rest))
