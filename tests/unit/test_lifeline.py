"""No process outlives the one that started it: children started every way a service starts
them (multiprocessing spawn, as vLLM's CPU build does, and fork; subprocess) die with it, and
so do their own children."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.shared import lifeline
from tests.support.procs import running, wait_gone

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(not lifeline.supported(), reason="no PR_SET_PDEATHSIG here")]
ROOT = Path(__file__).resolve().parents[2]


class Tree:
    """A middle process (tests.support.lifeline_tree) and what it reported."""

    def __init__(self, mode: str) -> None:
        self.middle = subprocess.Popen([sys.executable, "-m", "tests.support.lifeline_tree", mode],
                                       cwd=ROOT, stdout=subprocess.PIPE, text=True)
        self.pids: dict[str, int] = {}
        self.signals: dict[str, int] = {}
        self.lines: list[str] = []

    def read(self, *roles: str) -> None:
        assert self.middle.stdout is not None
        while not set(roles) <= set(self.pids) | set(self.lines):
            line = self.middle.stdout.readline().strip()
            assert line, f"the middle process ended early (code {self.middle.poll()})"
            parts = line.split()
            if len(parts) == 3:
                self.pids[parts[0]] = int(parts[1])
                self.signals[parts[0]] = int(parts[2])
            else:
                self.lines.append(line)

    def kill_middle(self) -> None:
        self.middle.kill()
        self.middle.wait()

    def clean_up(self) -> None:
        self.kill_middle()
        for pid in self.pids.values():
            if running(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def tree() -> Iterator[list[Tree]]:
    made: list[Tree] = []
    yield made
    for t in made:
        t.clean_up()


def start(made: list[Tree], mode: str, *roles: str) -> Tree:
    t = Tree(mode)
    made.append(t)
    t.read(*roles)
    return t


@pytest.mark.parametrize("mode", ["spawn", "fork", "spawn-then-fork"])
def test_multiprocessing_children_and_theirs_die_with_the_process(tree: list[Tree], mode: str) -> None:
    t = start(tree, mode, "middle", "branch", "leaf")
    assert t.signals["branch"] == t.signals["leaf"] == signal.SIGKILL
    t.kill_middle()
    assert wait_gone([t.pids["branch"], t.pids["leaf"]], timeout_s=10) == set()


def test_unbound_spawned_children_outlive_a_killed_parent(tree: list[Tree]) -> None:
    """What happens to vLLM's engine core without bind_children."""
    t = start(tree, "unbound", "middle", "branch", "leaf")
    assert t.signals["branch"] == 0
    t.kill_middle()
    assert wait_gone([t.pids["branch"]], timeout_s=1) == {t.pids["branch"]}


def test_a_child_started_off_the_main_thread_is_not_bound(tree: list[Tree]) -> None:
    """Linux signals a child when the thread that started it ends, not its process: a child
    started by a thread that has ended since must still run."""
    t = start(tree, "spawn-from-thread", "middle", "leaf", "thread-ended")
    assert t.signals["leaf"] == 0
    assert running(t.pids["leaf"])


def test_popen_children_get_the_signal_asked_for(tree: list[Tree]) -> None:
    t = start(tree, "popen", "middle", "leaf")
    assert t.signals["leaf"] == signal.SIGTERM
    t.kill_middle()
    assert wait_gone([t.pids["leaf"]], timeout_s=10) == set()


def test_a_child_whose_parent_is_already_gone_gets_the_signal_at_once() -> None:
    code = ("import signal, time; from services.shared import lifeline\n"
            "lifeline.die_with_parent(signal.SIGTERM, parent=1)\ntime.sleep(30)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=30)
    assert proc.returncode == -signal.SIGTERM


def test_no_preexec_off_the_main_thread() -> None:
    import threading

    found: list[object] = []
    thread = threading.Thread(target=lambda: found.append(lifeline.die_with_parent_preexec(signal.SIGTERM)))
    thread.start()
    thread.join()
    assert found == [None]
    assert lifeline.die_with_parent_preexec(signal.SIGTERM) is not None


@pytest.fixture
def elsewhere(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(lifeline.platform, "system", lambda: "Darwin")
    lifeline._prctl.cache_clear()
    yield
    lifeline._prctl.cache_clear()


def test_elsewhere_it_says_so_once_and_carries_on(elsewhere: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=lifeline.__name__):
        assert lifeline.bind_children(signal.SIGKILL, "the worker") is False
    assert [r.getMessage() for r in caplog.records] == [
        "processes the worker starts may outlive it: no prctl(PR_SET_PDEATHSIG) on Darwin"]
    assert lifeline.die_with_parent_preexec(signal.SIGTERM) is None
