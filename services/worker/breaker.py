"""A circuit breaker in front of one provider: plain logic, with the clock passed in.

While a provider is down, every request would wait out its connect timeout and retries before
failing; the breaker turns that into an immediate refusal (the sender answers 503 at once, or
sends the task to the tier's fallback) and lets a single request find out when it is back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum


class State(IntEnum):
    """The breaker's state; the values are those of the ``skinflint_upstream_breaker_state`` gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """closed -> open after ``failures`` failures in a row -> half-open once ``open_s`` has
    passed -> closed again when its one probe succeeds, open again when it fails.

    Invariants: while closed every request is let through; while open none is; while half-open
    exactly one (the probe) is in flight, and the others are refused until its outcome is known.
    Every request let through by ``acquire`` is ended by exactly one of ``success``, ``failure``
    or ``release`` (an outcome that says nothing about the provider: the client went away). A
    success while closed resets the count of failures in a row.
    """

    def __init__(self, failures: int, open_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.open_s = open_s
        self._clock = clock
        self._state = State.CLOSED
        self._in_a_row = 0
        self._opened_at = 0.0
        self._probing = False
        #: What the last failure was, for the refusal's message.
        self.last_failure = ""

    @property
    def state(self) -> State:
        """The state now (an open breaker whose ``open_s`` has passed reads as half-open)."""
        if self._state is State.OPEN and self._clock() - self._opened_at >= self.open_s:
            self._state, self._probing = State.HALF_OPEN, False
        return self._state

    def would_allow(self) -> bool:
        """Whether a request arriving now would be let through (nothing is taken)."""
        state = self.state
        return state is State.CLOSED or (state is State.HALF_OPEN and not self._probing)

    def acquire(self) -> bool:
        """Let one request through, or refuse it (False). Half-open, the one let through is the probe."""
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self._state, self._in_a_row, self._probing = State.CLOSED, 0, False

    def failure(self, why: str) -> None:
        self.last_failure = why
        if self._state is State.HALF_OPEN:
            self._open()
            return
        self._in_a_row += 1
        if self._state is State.CLOSED and self._in_a_row >= self.failures:
            self._open()

    def release(self) -> None:
        """The request ended without telling anything about the provider: a probe's turn passes on."""
        if self._state is State.HALF_OPEN:
            self._probing = False

    def reopens_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it is not open)."""
        if self.state is not State.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.open_s - self._clock())

    def _open(self) -> None:
        self._state, self._opened_at, self._probing, self._in_a_row = State.OPEN, self._clock(), False, 0
