"""When a process that ``make run`` started stops on its own: say why, and when to start it again.

Plain logic for ``services.stack``'s supervisor. A process that fails again soon after each start
(a broken dependency, a port someone else took) is started ever less often, so its log stays
readable and the machine is not kept busy restarting it; one that has run fine for a while is a
fresh case. A process that reports its configuration as wrong is not restarted at all: it would
fail the same way every time.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

# What a service exits with, after a one-line message, when its configuration is wrong.
from services.shared.runner import EX_CONFIG

__all__ = ["EX_CONFIG", "Backoff", "exit_reason", "restartable"]


def exit_reason(returncode: int) -> str:
    """``Popen.returncode`` in words: ``exited with code 1``, ``was killed by SIGKILL``."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name}"


def restartable(returncode: int) -> bool:
    """Whether a process that stopped with ``returncode`` should be started again."""
    return returncode != EX_CONFIG


@dataclass
class Backoff:
    """The wait before each restart of one process: ``first_s``, doubled after every stop that
    came sooner than ``healthy_after_s`` after its start, at most ``max_s``; a process that ran
    ``healthy_after_s`` or longer starts again from ``first_s``."""

    first_s: float = 1.0
    max_s: float = 30.0
    healthy_after_s: float = 60.0
    _next_s: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s:
            raise ValueError(f"backoff needs 0 < first_s <= max_s, got {self.first_s} and {self.max_s}")
        self._next_s = self.first_s

    def delay_s(self, ran_for_s: float) -> float:
        """The wait before restarting a process that ran ``ran_for_s`` seconds and stopped."""
        if ran_for_s >= self.healthy_after_s:
            self._next_s = self.first_s
        delay = self._next_s
        self._next_s = min(delay * 2, self.max_s)
        return delay
