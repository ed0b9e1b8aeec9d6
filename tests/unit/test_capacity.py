"""Admission rules of a worker."""

from __future__ import annotations

import pytest

from contracts.subjects import Priority
from services.worker.capacity import Capacity

pytestmark = pytest.mark.unit


def test_bulk_never_takes_the_interactive_reserve() -> None:
    cap = Capacity(slots=8, max_waiting=4, reserve=2)
    assert cap.bulk_room(0.0) == 6
    for _ in range(6):
        cap.take(Priority.BULK)
    assert cap.bulk_room(0.0) == 0
    # Interactive work still gets in: the reserve, then the engine's waiting queue.
    for _ in range(6):
        assert cap.can_admit_interactive()
        cap.take(Priority.INTERACTIVE)
    assert not cap.can_admit_interactive()


def test_interactive_load_stops_bulk_pulls() -> None:
    cap = Capacity(slots=4, max_waiting=0, reserve=1)
    cap.take(Priority.INTERACTIVE)
    cap.take(Priority.INTERACTIVE)
    assert cap.bulk_room(0.0) == 1
    cap.take(Priority.INTERACTIVE)
    assert cap.bulk_room(0.0) == 0
    cap.release(Priority.INTERACTIVE)
    assert cap.bulk_room(0.0) == 1


def test_release_more_than_taken_is_a_bug() -> None:
    cap = Capacity(slots=1, max_waiting=0, reserve=0)
    with pytest.raises(AssertionError):
        cap.release(Priority.BULK)


def test_while_chat_is_active_bulk_keeps_only_its_share_and_the_rest_is_handed_back() -> None:
    cap = Capacity(slots=8, max_waiting=0, reserve=1, bulk_with_chat=2, chat_quiet_s=5.0)
    assert cap.bulk_room(100.0) == 7  # no chat: every slot but the reserve
    for _ in range(7):
        cap.take(Priority.BULK)
    cap.chat_arrived(100.0)
    cap.take(Priority.INTERACTIVE)
    assert cap.bulk_excess(100.0) == 5 and cap.bulk_room(100.0) == 0
    for _ in range(5):
        cap.release(Priority.BULK)
    assert cap.bulk_excess(100.0) == 0 and cap.bulk_room(100.0) == 0
    cap.release(Priority.INTERACTIVE)
    # The chat ended a moment ago: still active; bulk gets its free slots back only after the quiet.
    assert cap.chat_active(104.0) and cap.bulk_room(104.0) == 0
    assert not cap.chat_active(105.5) and cap.bulk_room(105.5) == 5


def test_without_a_chat_share_bulk_is_never_handed_back() -> None:
    cap = Capacity(slots=4, max_waiting=0, reserve=1)
    for _ in range(3):
        cap.take(Priority.BULK)
    cap.chat_arrived(1.0)
    assert cap.bulk_excess(1.0) == 0
