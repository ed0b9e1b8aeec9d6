"""Short scheduler slices: set on threads and processes, inherited, refused where unsupported."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from services.shared import sched
from services.shared.settings import ServiceSettings

HAS_CUSTOM_SLICES = sched.slices_supported()
needs_custom_slices = pytest.mark.skipif(not HAS_CUSTOM_SLICES,
                                         reason="this kernel has no per-task slices (Linux < 6.12)")


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process of a few threads that does nothing."""
    code = "import threading, time\n[threading.Thread(target=time.sleep, args=(60,)).start() for _ in range(3)]\n"
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 30
    while len(sched.threads_of(proc.pid)) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    yield proc
    proc.kill()
    proc.wait()


def test_probing_for_slices_changes_no_thread_but_its_own() -> None:
    before = sched.get_slice_us()
    assert sched.slices_supported() is HAS_CUSTOM_SLICES
    assert sched.get_slice_us() == before


def test_a_slice_outside_the_kernels_bounds_is_refused() -> None:
    for bad in (0, 99, 100_001):
        with pytest.raises(ValueError, match=r"100\.\.100000"):
            sched.set_slice_us(bad)


@needs_custom_slices
def test_every_thread_of_a_process_takes_the_slice(sleeper: subprocess.Popen[bytes]) -> None:
    default = sched.get_slice_us(sched.threads_of(sleeper.pid)[0])
    assert sched.set_process_slice_us(250, sleeper.pid) == len(sched.threads_of(sleeper.pid)) >= 4
    assert {sched.get_slice_us(t) for t in sched.threads_of(sleeper.pid)} == {250}
    assert default != 250 and sched.get_slice_us() != 250  # nobody else's changed


@needs_custom_slices
def test_threads_and_processes_started_afterwards_inherit_it() -> None:
    code = """
import subprocess, sys, threading
from services.shared import sched
sched.set_slice_us(400)
seen = []
t = threading.Thread(target=lambda: seen.append(sched.get_slice_us()))
t.start(); t.join()
child = subprocess.run([sys.executable, "-c", "from services.shared import sched; print(sched.get_slice_us())"],
                       capture_output=True, text=True, check=True)
print(seen[0], child.stdout.strip())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["400", "400"]


def test_a_slice_of_0_keeps_the_kernels_default(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        assert sched.apply_request_path_slice(0, "svc") is False
    assert caplog.records == []


def test_an_unsupported_system_is_logged_and_the_service_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unsupported() -> tuple[int, int]:
        raise sched.SliceUnsupported("no sched_setattr on Plan9 mips")

    monkeypatch.setattr(sched, "_numbers", unsupported)
    with caplog.at_level(logging.INFO):
        assert sched.apply_request_path_slice(200, "ingress") is False
    assert "ingress keeps the kernel's default scheduler slice: no sched_setattr on Plan9 mips" in caplog.text


def test_a_refusal_by_the_kernel_is_a_warning(monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    def refused(slice_us: int, tid: int = 0) -> None:
        raise PermissionError(1, "sched_setattr(1): Operation not permitted")

    monkeypatch.setattr(sched, "set_slice_us", refused)
    with caplog.at_level(logging.INFO):
        assert sched.apply_request_path_slice(200, "worker") is False
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "Operation not permitted" in caplog.text


def test_a_thread_that_ends_meanwhile_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    done = threading.Event()
    gone = threading.Thread(target=done.wait)
    gone.start()
    tids = [threading.get_native_id(), gone.native_id or 0]
    done.set()
    gone.join()
    calls: list[int] = []

    def set_slice(slice_us: int, tid: int = 0) -> None:
        calls.append(tid)
        if tid == tids[1]:
            raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(sched, "threads_of", lambda pid: tids)
    monkeypatch.setattr(sched, "set_slice_us", set_slice)
    assert sched.set_process_slice_us(200) == 1
    assert calls == tids


def test_services_ask_for_the_shortest_slice_unless_told_otherwise() -> None:
    assert ServiceSettings().sched_slice_us == sched.DEFAULT_SLICE_US == 100
    assert ServiceSettings(sched_slice_us=0).sched_slice_us == 0
    assert ServiceSettings(sched_slice_us=2000).sched_slice_us == 2000
    for bad in (-1, 50, 200_000):
        with pytest.raises(ValidationError,
                           match=r"sched_slice_us\n.*must be 0 \(the kernel's default\) or 100\.\.100000"):
            ServiceSettings(sched_slice_us=bad)


def test_the_command_line_sets_a_running_process(sleeper: subprocess.Popen[bytes],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    if not HAS_CUSTOM_SLICES:
        assert sched.main([str(sleeper.pid)]) == 1
        return
    assert sched.main(["--slice-us", "500", str(sleeper.pid)]) == 0
    assert capsys.readouterr().out == f"{sleeper.pid}: 500 µs on {len(sched.threads_of(sleeper.pid))} thread(s)\n"
    assert {sched.get_slice_us(t) for t in sched.threads_of(sleeper.pid)} == {500}


def test_the_command_line_names_what_it_could_not_do(capsys: pytest.CaptureFixture[str]) -> None:
    assert sched.main(["999999999"]) == 1
    assert capsys.readouterr().out == "999999999: no such process\n"
    with pytest.raises(SystemExit):
        sched.main(["--slice-us", "5", "1"])
    assert "--slice-us must be 100..100000" in capsys.readouterr().err


# --- placement ------------------------------------------------------------------------------------
needs_two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs at least 2 CPUs")

#: A parent that starts a child pinned to its first CPU (as vLLM pins its compute), waits for a
#: word on stdin, then starts a child that only inherits its own placement.
_ENGINE_LIKE = """
import os, subprocess, sys
first = min(os.sched_getaffinity(0))
pinned = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                          preexec_fn=lambda: os.sched_setaffinity(0, {first}))
print(pinned.pid, flush=True)
sys.stdin.readline()
later = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(later.pid, flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def engine_like() -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen([sys.executable, "-c", _ENGINE_LIKE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pinned = int(proc.stdout.readline())
    yield proc, pinned
    for pid in sched.descendants(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    proc.kill()
    proc.wait()


@needs_two_cpus
def test_the_engines_cpus_are_where_its_processes_are_pinned(
    engine_like: tuple[subprocess.Popen[str], int]
) -> None:
    proc, pinned = engine_like
    available = frozenset(os.sched_getaffinity(0))
    first = min(available)
    assert pinned in sched.descendants(proc.pid)
    assert sched.engine_cpus(proc.pid, available) == {first}
    # The owner keeps off them; a process it starts afterwards only inherits that placement.
    assert sched.keep_off_engine_cpus("owner", [proc.pid], owners=[proc.pid], available=available) \
        == available - {first}
    assert sched.cpus_of(proc.pid) == available - {first}
    assert sched.cpus_of(pinned) == {first}  # the engine's own processes stay where they are
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    later = int(proc.stdout.readline())
    assert sched.cpus_of(later) == available - {first}
    assert sched.engine_cpus(proc.pid, available) == {first}


def test_nothing_moves_when_no_engine_is_pinned(sleeper: subprocess.Popen[bytes],
                                                caplog: pytest.LogCaptureFixture) -> None:
    before = sched.cpus_of(sleeper.pid)
    with caplog.at_level(logging.INFO):
        assert sched.keep_off_engine_cpus("ingress", [sleeper.pid], owners=[sleeper.pid]) == frozenset()
    assert sched.cpus_of(sleeper.pid) == before and caplog.records == []
