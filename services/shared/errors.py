"""Errors that reach a user: each says what was wrong, which field, and what to do."""

from __future__ import annotations

from contracts.v1 import ErrorReply


class SkinflintError(Exception):
    """An error with an HTTP status and an OpenAI-style code; safe to show to the caller."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, status: int | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code

    def to_reply(self, request_id: str) -> ErrorReply:
        return ErrorReply(
            request_id=request_id, status=self.status, code=self.code, message=self.message,
            param=self.param,
        )

    @classmethod
    def from_reply(cls, reply: ErrorReply) -> SkinflintError:
        return cls(reply.message, param=reply.param, status=reply.status, code=reply.code)


class BadRequest(SkinflintError):
    status = 400
    code = "invalid_request_error"


class Unauthorized(SkinflintError):
    status = 401
    code = "invalid_api_key"


class NotFound(SkinflintError):
    status = 404
    code = "model_not_found"


class PayloadTooLarge(SkinflintError):
    status = 413
    code = "payload_too_large"


class RateLimited(SkinflintError):
    status = 429
    code = "rate_limit_exceeded"


class Unavailable(SkinflintError):
    status = 503
    code = "service_unavailable"


class Timeout(SkinflintError):
    status = 504
    code = "timeout"


#: Statuses that say "not now" rather than "never": nothing answered the request yet.
TRANSIENT_STATUSES = frozenset({502, 503, 504})


def is_transient(reply: object) -> bool:
    """Whether ``reply`` is an error a later attempt may not meet (a bulk item is then handed on
    again instead of failing)."""
    return isinstance(reply, ErrorReply) and reply.status in TRANSIENT_STATUSES
