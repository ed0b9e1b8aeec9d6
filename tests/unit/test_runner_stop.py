"""A service asked to stop always stops: a close that hangs is cut short, and a process whose
shutdown hangs anyway ends itself (``services.shared.runner``)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from services.shared import runner

pytestmark = pytest.mark.unit


class HangsOnClose:
    """A service whose close waits forever (as a client library waiting on a bus that is gone)."""

    name = "stuck"

    def __init__(self) -> None:
        self.closing = False

    async def start(self) -> None: ...

    async def drain(self) -> None: ...

    async def close(self) -> None:
        self.closing = True
        await asyncio.Event().wait()

    def ready(self) -> tuple[bool, dict[str, Any]]:
        return True, {}


async def test_a_close_that_hangs_is_cut_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "CLOSE_TIMEOUT_S", 0.2)
    service, stop = HangsOnClose(), asyncio.Event()
    stop.set()
    started = time.monotonic()
    await asyncio.wait_for(runner.serve(service, drain_timeout_s=1, stop=stop), timeout=5)
    assert service.closing and time.monotonic() - started < 2


def test_a_process_still_running_at_its_deadline_ends_itself_saying_where_it_hung() -> None:
    code = ("import time\nfrom services.shared.runner import exit_deadline\n"
            "exit_deadline('stuck', 0.3)\ntime.sleep(30)\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert done.returncode == runner.EXIT_STUCK
    assert time.monotonic() - started < 10
    assert "[stuck] did not stop within 0.3 s of being asked to; exiting now" in done.stderr
    assert "time.sleep" in done.stderr or "<string>" in done.stderr  # every thread's stack, for the log


SLOW_DRAIN = """
import asyncio, sys
from services.shared.runner import serve

class SlowDrain:
    name = "slow"
    async def start(self): print("ready", flush=True)
    async def drain(self):
        await asyncio.sleep(2.5)
        print("drained", flush=True)
    async def close(self): print("closed", flush=True)
    def ready(self): return True, {}

asyncio.run(serve(SlowDrain(), drain_timeout_s=10))
"""


@pytest.mark.parametrize("gap_s", [0.02, 1.5], ids=["echo", "second request"])
def test_a_burst_of_stop_signals_still_drains_but_a_later_second_one_stops_at_once(gap_s: float) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SLOW_DRAIN], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        time.sleep(gap_s)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    if gap_s < runner.REPEAT_SIGNAL_IGNORED_S:  # a launcher's dying burst: one request to stop
        assert proc.returncode == 0 and out.split() == ["drained", "closed"]
    else:  # asked again: now
        assert proc.returncode == -signal.SIGTERM and "drained" not in out
