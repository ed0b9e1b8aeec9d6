"""How much work a worker takes: the admission rules, as plain logic."""

from __future__ import annotations

from dataclasses import dataclass

from contracts.subjects import Priority


@dataclass
class Capacity:
    """Counts what a worker holds and decides what it may take next.

    Invariants: interactive work is admitted while fewer than ``slots + max_waiting`` tasks are
    held (the overflow waits in the engine's priority queue, ahead of any bulk work); bulk work
    is only pulled into slots that leave ``reserve`` slots free for interactive bursts, so a
    bulk backlog never delays a chat answer by more than what is already running.
    """

    slots: int
    max_waiting: int
    reserve: int
    interactive: int = 0
    bulk: int = 0

    @property
    def held(self) -> int:
        return self.interactive + self.bulk

    def can_admit_interactive(self) -> bool:
        return self.held < self.slots + self.max_waiting

    def bulk_room(self) -> int:
        """How many bulk tasks may be pulled now."""
        return max(0, self.slots - self.reserve - self.held)

    def take(self, priority: Priority) -> None:
        if priority is Priority.BULK:
            self.bulk += 1
        else:
            self.interactive += 1

    def release(self, priority: Priority) -> None:
        if priority is Priority.BULK:
            self.bulk -= 1
        else:
            self.interactive -= 1
        assert self.bulk >= 0 and self.interactive >= 0, "released more than was taken"
