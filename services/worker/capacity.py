"""How much work a worker takes: the admission rules, as plain logic."""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.subjects import Priority


@dataclass
class Capacity:
    """Counts what a worker holds and decides what it may take next.

    Invariants: interactive work is admitted while fewer than ``slots + max_waiting`` tasks are
    held (the overflow waits in the engine's priority queue, ahead of any bulk work); bulk work
    is only pulled into slots that leave ``reserve`` slots free for interactive bursts, and while
    chat is active at most ``bulk_with_chat`` bulk tasks run: the ones over it when chat arrives are
    handed back (preempted), so a bulk backlog costs a chat answer at most a few engine steps.
    """

    slots: int
    max_waiting: int
    reserve: int
    interactive: int = 0
    bulk: int = 0
    #: Bulk tasks kept while chat is active (``chat_active``): on a CPU, and on a GPU with long
    #: prompts, every sequence in the batch slows each step, and a chat's first token waits for
    #: steps. None: no limit beyond the reserve.
    bulk_with_chat: int | None = None
    #: Chat counts as active this long after an interactive task arrived.
    chat_quiet_s: float = 5.0
    _chat_seen_at: float = field(default=-1e18, repr=False)

    @property
    def held(self) -> int:
        return self.interactive + self.bulk

    def can_admit_interactive(self) -> bool:
        return self.held < self.slots + self.max_waiting

    def chat_arrived(self, now: float) -> None:
        self._chat_seen_at = now

    def chat_active(self, now: float) -> bool:
        return self.interactive > 0 or now - self._chat_seen_at < self.chat_quiet_s

    def bulk_limit(self, now: float) -> int:
        """The most bulk tasks held at ``now``: the slots the reserve leaves, fewer while chat is active."""
        limit = self.slots - self.reserve
        if self.bulk_with_chat is not None and self.chat_active(now):
            limit = min(limit, self.bulk_with_chat)
        return limit

    def bulk_room(self, now: float) -> int:
        """How many bulk tasks may be pulled now."""
        return max(0, min(self.bulk_limit(now) - self.bulk, self.slots - self.reserve - self.held))

    def bulk_excess(self, now: float) -> int:
        """How many running bulk tasks are over the limit (chat just became active): the worker
        hands them back to the queue, to run again later."""
        return max(0, self.bulk - self.bulk_limit(now))

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
