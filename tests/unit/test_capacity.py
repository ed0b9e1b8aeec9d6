"""Admission rules of a worker."""

from __future__ import annotations

import pytest

from contracts.subjects import Priority
from services.worker.capacity import Capacity

pytestmark = pytest.mark.unit


def test_bulk_never_takes_the_interactive_reserve() -> None:
    cap = Capacity(slots=8, max_waiting=4, reserve=2)
    assert cap.bulk_room() == 6
    for _ in range(6):
        cap.take(Priority.BULK)
    assert cap.bulk_room() == 0
    # Interactive work still gets in: the reserve, then the engine's waiting queue.
    for _ in range(6):
        assert cap.can_admit_interactive()
        cap.take(Priority.INTERACTIVE)
    assert not cap.can_admit_interactive()


def test_interactive_load_stops_bulk_pulls() -> None:
    cap = Capacity(slots=4, max_waiting=0, reserve=1)
    cap.take(Priority.INTERACTIVE)
    cap.take(Priority.INTERACTIVE)
    assert cap.bulk_room() == 1
    cap.take(Priority.INTERACTIVE)
    assert cap.bulk_room() == 0
    cap.release(Priority.INTERACTIVE)
    assert cap.bulk_room() == 1


def test_release_more_than_taken_is_a_bug() -> None:
    cap = Capacity(slots=1, max_waiting=0, reserve=0)
    with pytest.raises(AssertionError):
        cap.release(Priority.BULK)
