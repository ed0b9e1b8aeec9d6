"""When make run's supervisor starts a stopped process again, and how it says why it stopped."""

from __future__ import annotations

import signal

import pytest

from services.restarts import EX_CONFIG, Backoff, exit_reason, restartable

pytestmark = pytest.mark.unit


def test_the_wait_doubles_while_it_keeps_failing_up_to_the_cap() -> None:
    backoff = Backoff(first_s=1, max_s=30, healthy_after_s=60)
    assert [backoff.delay_s(ran_for_s=2) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_process_that_ran_fine_for_a_while_starts_from_the_first_wait() -> None:
    backoff = Backoff(first_s=1, max_s=30, healthy_after_s=60)
    for _ in range(4):
        backoff.delay_s(ran_for_s=5)
    assert backoff.delay_s(ran_for_s=60) == 1
    assert backoff.delay_s(ran_for_s=5) == 2


def test_a_backoff_that_cannot_work_is_refused() -> None:
    with pytest.raises(ValueError, match="first_s <= max_s"):
        Backoff(first_s=5, max_s=1)


def test_exit_codes_and_signals_in_words() -> None:
    assert exit_reason(1) == "exited with code 1"
    assert exit_reason(-signal.SIGKILL) == "was killed by SIGKILL"
    assert exit_reason(-200) == "was killed by signal 200"


def test_a_configuration_error_is_not_restarted() -> None:
    assert not restartable(EX_CONFIG)
    assert restartable(1) and restartable(0) and restartable(-signal.SIGKILL)
