"""Short scheduler slices: set on threads and processes, inherited, refused where unsupported."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from services.shared import sched
from services.shared.settings import ServiceSettings


def _kernel_has_custom_slices() -> bool:
    # Probed in a child process, so the test process keeps the kernel's default.
    probe = ("from services.shared import sched\n"
             "try:\n    sched.set_slice_us(300)\nexcept OSError:\n    raise SystemExit(1)\n")
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


needs_custom_slices = pytest.mark.skipif(not _kernel_has_custom_slices(),
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
