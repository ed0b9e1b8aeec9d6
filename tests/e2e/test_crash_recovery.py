"""Killed processes, with the real vLLM CPU engine: nothing a killed process started lives on,
and `make run` starts a killed service again.

Each test starts engines of its own (about a minute each), apart from the session's ``live``
stack; this file sorts before test_e2e.py, so they run before that stack is up.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.shared import sched
from services.stack import ROOT, free_port, port_is_free
from tests.e2e.conftest import MODEL_DIR
from tests.support.natsd import NatsServer
from tests.support.procs import cmdline, running, wait_gone

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]
KEY = "sk-skinflint-demo"
CHAT = {"model": "smollm2-135m", "max_tokens": 8,
        "messages": [{"role": "user", "content": "Name the capital city of France."}]}


@pytest.fixture(autouse=True)
def _model() -> None:
    if not (MODEL_DIR / ".complete").exists():
        pytest.fail(f"{MODEL_DIR} is missing: run `make install` (converts the model once)")


class Output:
    """A process's output, written to a file and searched as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def wait_for(self, pattern: str, proc: subprocess.Popen[bytes], timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if found := re.search(pattern, self.path.read_text(errors="replace")):
                return found
            if proc.poll() is not None:
                raise AssertionError(f"it exited with code {proc.returncode}; see {self.path}")
            time.sleep(0.5)
        raise AssertionError(f"no {pattern!r} within {timeout_s:.0f} s; see {self.path}")


@pytest.fixture
def started() -> Iterator[list[int]]:
    """Pids a test records; whatever of them still runs at the end is killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


def engine_processes(pid: int) -> list[int]:
    found = [p for p in sched.descendants(pid) if Path(f"/proc/{p}/comm").read_text().startswith("VLLM::")]
    assert found, f"process {pid} runs no VLLM:: process"
    return found


def test_a_worker_run_on_its_own_takes_its_engine_processes_with_it(
        tmp_path: Path, fresh_nats_server: NatsServer, started: list[int]) -> None:
    """As under systemd or from a shell: no launcher of ours to clean up after it."""
    env = {**os.environ, "SF_NATS_URL": fresh_nats_server.url, "SF_HEALTH_PORT": str(free_port()),
           "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    out = Output(tmp_path / "worker.log")
    with open(out.path, "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "services.worker"], cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    started.append(worker.pid)
    try:
        out.wait_for(r"worker is ready", worker, timeout_s=600)
        engine = engine_processes(worker.pid)
        started.extend(engine)
        worker.kill()
        worker.wait()
        assert wait_gone(engine, timeout_s=30) == set(), f"left running: {engine}"
    finally:
        worker.kill()
        worker.wait()


def chat_until_answered(base_url: str, timeout_s: float) -> str:
    """Ask until a worker answers (503 while none serves); the answer's text."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            reply = httpx.post(f"{base_url}/v1/chat/completions", json=CHAT, timeout=60,
                               headers={"Authorization": f"Bearer {KEY}"})
        except httpx.HTTPError as exc:
            last = repr(exc)
        else:
            if reply.status_code == 200:
                return str(reply.json()["choices"][0]["message"]["content"])
            last = f"{reply.status_code} {reply.text[:200]}"
        time.sleep(1)
    raise AssertionError(f"no answer within {timeout_s:.0f} s; last: {last}")


def child_running(launcher: int, module: str) -> int:
    pids = [p for p in sched.descendants(launcher) if cmdline(p)[1:3] == ["-m", module]]
    assert len(pids) == 1, f"{module}: {pids}"
    return pids[0]


def test_make_run_restarts_a_killed_worker_and_a_killed_launcher_leaves_nothing(
        tmp_path: Path, started: list[int]) -> None:
    http_port, nats_port = free_port(), free_port()
    env = {**os.environ, "SF_PORT": str(http_port), "SF_NATS_PORT": str(nats_port),
           "SF_VAR_DIR": str(tmp_path / "var"), "SF_HEARTBEAT_INTERVAL_S": "0.5"}
    out = Output(tmp_path / "make-run.out")
    with open(out.path, "wb") as log:
        launcher = subprocess.Popen([sys.executable, "scripts/run_local.py"], cwd=ROOT, env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
    started.append(launcher.pid)
    try:
        out.wait_for(r"skinflint is up", launcher, timeout_s=600)
        nats_url = out.wait_for(r"nats-server with JetStream at (\S+)", launcher, 1)[1]

        # The worker is killed: its engine processes go with it, and it comes back.
        worker = child_running(launcher.pid, "services.worker")
        engine = engine_processes(worker)
        started.extend(engine)
        os.kill(worker, signal.SIGKILL)
        assert wait_gone([worker, *engine], timeout_s=30) == set(), f"left running: {engine}"
        out.wait_for(r"worker was killed by SIGKILL .*; starting it again", launcher, 30)
        out.wait_for(r"worker started again", launcher, 60)
        assert chat_until_answered(f"http://127.0.0.1:{http_port}", timeout_s=600)
        assert child_running(launcher.pid, "services.worker") != worker

        # The launcher is killed: everything it started stops, and the ports are free again.
        everything = sched.descendants(launcher.pid)
        started.extend(everything)
        assert len(everything) >= 5  # nats-server, three services, an engine process or more
        launcher.kill()
        launcher.wait()
        assert wait_gone(everything, timeout_s=60) == set(), {p: cmdline(p) for p in everything if running(p)}
        assert port_is_free(http_port)
        assert port_is_free(int(nats_url.rsplit(":", 1)[1]))
    finally:
        launcher.kill()
        launcher.wait()
