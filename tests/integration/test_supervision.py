"""make run's supervision (services.stack) on stand-in services: a process that stops is started
again the same way after a backoff, what it left running is killed, a configuration error stops
it all, and nothing outlives a killed launcher."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.restarts import Backoff
from services.shared import lifeline, sched
from services.stack import ROOT, Proc, ServiceStopped, Stack, free_port, port_is_free
from tests.support.procs import running, wait_gone

pytestmark = pytest.mark.integration
DUMMY = "tests.support.dummy_service"
_STARTED = re.compile(r"started pid=(\d+) child=(\d+) health=(\d*)")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(var_dir=tmp_path, backoff=lambda: Backoff(first_s=0.2, max_s=0.8, healthy_after_s=60))
    yield s
    s.stop()


def started(proc: Proc, timeout_s: float = 20) -> tuple[int, int, int | None]:
    """(pid, child pid, health port) that the stand-in printed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in list(proc.tail):
            if m := _STARTED.search(line):
                return int(m[1]), int(m[2]), int(m[3]) if m[3] else None
        time.sleep(0.02)
    raise AssertionError(f"{proc.name} printed nothing in {timeout_s} s: {list(proc.tail)}")


def supervise_until(stack: Stack, pattern: str, timeout_s: float = 20) -> list[str]:
    """supervise_once every 50 ms until an event matches ``pattern``; every event so far."""
    events: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        events += stack.supervise_once()
        if any(re.search(pattern, e) for e in events):
            return events
        time.sleep(0.05)
    raise AssertionError(f"no event matching {pattern!r} in {timeout_s} s: {events}")


def test_a_killed_service_comes_back_on_its_ports_and_its_leftovers_are_killed(stack: Stack) -> None:
    first = stack.start_service("dummy", DUMMY, {"DUMMY_CHILD": "1"})
    pid, child, health = started(first)
    assert health is not None and health == first.health_port
    os.kill(pid, signal.SIGKILL)
    events = supervise_until(stack, r"dummy started again")
    assert events[0] == (f"dummy was killed by SIGKILL (see {first.log_path}); "
                         "starting it again in 0.2 s")
    assert wait_gone([child], timeout_s=5) == set(), "the child it left running was not killed"
    again = stack.procs["dummy"]
    new_pid, _, new_health = started(again)
    assert new_pid != pid and running(new_pid)
    assert new_health == health == again.health_port
    assert again.env == first.env


def test_the_wait_grows_while_it_keeps_failing(stack: Stack) -> None:
    stack.start_service("dummy", DUMMY, {"DUMMY_EXIT": "3"})
    events = supervise_until(stack, r"again in 0\.8 s")
    waits = [float(m[1]) for e in events if (m := re.search(r"again in ([\d.]+) s", e))]
    assert waits == [0.2, 0.4, 0.8]
    assert all("exited with code 3" in e for e in events if "again in" in e)


def test_a_configuration_error_stops_supervision_with_its_message(stack: Stack) -> None:
    say = "12:00:00 ERROR [dummy] configuration error: environment: SF_MAX_NUM_SEQS: must be >= 1"
    stack.start_service("dummy", DUMMY, {"DUMMY_EXIT": "78", "DUMMY_SAY": say})
    deadline = time.monotonic() + 20
    with pytest.raises(ServiceStopped) as stopped:
        while time.monotonic() < deadline:
            stack.supervise_once()
            time.sleep(0.05)
    assert str(stopped.value) == f"dummy exited with code 78, its configuration is wrong: {say}"


def test_stopping_a_service_cancels_its_restart(stack: Stack) -> None:
    stack.start_service("dummy", DUMMY, {"DUMMY_EXIT": "3"})
    supervise_until(stack, r"starting it again")
    assert stack.stop_one("dummy") == 3
    time.sleep(0.3)
    assert stack.supervise_once() == [] and "dummy" not in stack.procs


def test_every_service_has_a_metrics_target_of_its_own(stack: Stack) -> None:
    stack.start_service("a", DUMMY)
    stack.start_service("b", DUMMY, {"SF_HEALTH_PORT": "19999"})
    targets = stack.metrics_targets()
    assert targets["b"] == "127.0.0.1:19999"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", targets["a"]) and targets["a"] != targets["b"]
    assert started(stack.procs["a"])[2] == stack.procs["a"].health_port


LAUNCHER = """
import sys, time
from pathlib import Path
from services.stack import Stack, free_port
stack = Stack(var_dir=Path(sys.argv[1]))
print(stack.start_nats(free_port()), flush=True)
for name in ("one", "two"):
    stack.start_service(name, "tests.support.dummy_service")
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not lifeline.supported(), reason="no PR_SET_PDEATHSIG here")
def test_nothing_outlives_a_killed_launcher(tmp_path: Path) -> None:
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(tmp_path)], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
    started_here: list[int] = []
    try:
        assert launcher.stdout is not None
        nats_url = launcher.stdout.readline().strip()
        assert launcher.stdout.readline().strip() == "ready"
        started_here = sched.descendants(launcher.pid)
        assert len(started_here) == 3  # nats-server and the two services
        launcher.kill()
        launcher.wait()
        assert wait_gone(started_here, timeout_s=10) == set()
        assert port_is_free(int(nats_url.rsplit(":", 1)[1]))
    finally:
        launcher.kill()
        for pid in started_here:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_make_run_stops_with_the_message_of_a_service_whose_configuration_is_wrong(tmp_path: Path) -> None:
    # No vllm serve for the large tier (SF_LOCAL_UPSTREAM empty): every worker stops on the mistake.
    env = {**os.environ, "SF_PORT": str(free_port()), "SF_NATS_PORT": str(free_port()), "SF_LOCAL_UPSTREAM": "",
           "SF_VAR_DIR": str(tmp_path / "var"), "SF_MAX_NUM_SEQS": "0"}
    done = subprocess.run([sys.executable, "scripts/run_local.py"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert re.search(r"==> worker(-large)? exited with code 78, its configuration is wrong: \S+ ERROR \[worker\] "
                     r"configuration error: .*SF_MAX_NUM_SEQS: Input should be greater than or equal to 1",
                     done.stderr), done.stderr[-2000:]
    assert (tmp_path / "var" / "log" / "worker.log").exists()
