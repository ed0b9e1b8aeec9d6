"""OpenAI's response shapes: chat completions, stream chunks, errors."""

from __future__ import annotations

import json
import time
from typing import Any

from contracts.v1 import Final
from services.shared.errors import SkinflintError


def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def usage_block(final: Final) -> dict[str, Any]:
    return {
        "prompt_tokens": final.usage.prompt_tokens,
        "completion_tokens": final.usage.completion_tokens,
        "total_tokens": final.usage.prompt_tokens + final.usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": final.usage.cached_prompt_tokens},
    }


def completion(request_id: str, created: int, final: Final) -> dict[str, Any]:
    return {
        "id": completion_id(request_id),
        "object": "chat.completion",
        "created": created,
        "model": final.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": final.text},
            "finish_reason": final.finish_reason,
            "logprobs": None,
        }],
        "usage": usage_block(final),
        "system_fingerprint": f"skinflint-{final.tier}",
    }


def chunk(request_id: str, created: int, model: str, delta: dict[str, Any],
          finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": completion_id(request_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }


def usage_chunk(request_id: str, created: int, final: Final) -> dict[str, Any]:
    return {
        "id": completion_id(request_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": final.model,
        "choices": [],
        "usage": usage_block(final),
    }


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status < 500:
        return "invalid_request_error"
    return "server_error"


def error_body(err: SkinflintError) -> dict[str, Any]:
    return {"error": {"message": err.message, "type": error_type(err.status), "param": err.param,
                      "code": err.code}}


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def now() -> int:
    return int(time.time())
