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
from tests.support.procs import cmdline, environ, running, wait_gone

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


def child_running(launcher: int, module: str, **env: str) -> int:
    """The one process ``python -m module`` the launcher started, with ``env`` in its environment."""
    pids = [p for p in sched.descendants(launcher) if cmdline(p)[1:3] == ["-m", module]
            and all(environ(p).get(k) == v for k, v in env.items())]
    assert len(pids) == 1, f"{module}: {pids}"
    return pids[0]


def ask(base_url: str, model: str, content: str, **fields: object) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/chat/completions", timeout=120, headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": model, "max_tokens": 8, "temperature": 0,
                            "messages": [{"role": "user", "content": content}], **fields})


def check_two_tiers(base_url: str) -> None:
    """Both tiers answer with real engines: small in the worker, large through vllm serve; the
    router sends an easy question small and a hard one large."""
    named = ask(base_url, "smollm2-135m-remote", "Name the capital city of France.")
    assert named.status_code == 200, named.text
    assert (named.headers["x-skinflint-tier"], named.json()["model"]) == ("large", "smollm2-135m-remote")
    assert named.json()["usage"]["completion_tokens"] > 0
    streamed = ask(base_url, "smollm2-135m-remote", "Name a colour.", stream=True,
                   stream_options={"include_usage": True})
    assert streamed.status_code == 200 and '"completion_tokens"' in streamed.text and "[DONE]" in streamed.text
    easy = ask(base_url, "auto", "Can you recommend a good book to read this weekend?")
    hard = ask(base_url, "auto", "Find the number of ordered pairs (x, y) of integers with -100 <= x, y <= 100 "
                                 "such that 12x^2 - xy - 6y^2 = 0. Reason step by step.")
    assert easy.status_code == hard.status_code == 200, (easy.text, hard.text)
    assert (easy.headers["x-skinflint-tier"], easy.json()["model"]) == ("small", "smollm2-135m")
    assert (hard.headers["x-skinflint-tier"], hard.json()["model"]) == ("large", "smollm2-135m-remote")


def test_make_run_restarts_a_killed_worker_and_a_killed_launcher_leaves_nothing(
        tmp_path: Path, started: list[int]) -> None:
    http_port, nats_port = free_port(), free_port()
    # The shipped tiers, with the large tier's vllm serve on a free port (8100 may be in use).
    tiers = tmp_path / "tiers.yaml"
    tiers.write_text((ROOT / "infra/config/tiers.yaml").read_text().replace(
        "http://127.0.0.1:8100/v1", f"http://127.0.0.1:{free_port()}/v1"))
    env = {**os.environ, "SF_PORT": str(http_port), "SF_NATS_PORT": str(nats_port), "SF_TIERS_FILE": str(tiers),
           "SF_VAR_DIR": str(tmp_path / "var"), "SF_HEARTBEAT_INTERVAL_S": "0.5"}
    out = Output(tmp_path / "make-run.out")
    with open(out.path, "wb") as log:
        launcher = subprocess.Popen([sys.executable, "scripts/run_local.py"], cwd=ROOT, env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
    started.append(launcher.pid)
    try:
        out.wait_for(r"skinflint is up", launcher, timeout_s=600)
        nats_url = out.wait_for(r"nats-server with JetStream at (\S+)", launcher, 1)[1]

        check_two_tiers(f"http://127.0.0.1:{http_port}")

        # The worker is killed: its engine processes go with it, and it comes back.
        worker = child_running(launcher.pid, "services.worker", SF_TIER="small")
        engine = engine_processes(worker)
        started.extend(engine)
        os.kill(worker, signal.SIGKILL)
        assert wait_gone([worker, *engine], timeout_s=30) == set(), f"left running: {engine}"
        out.wait_for(r"worker was killed by SIGKILL .*; starting it again", launcher, 30)
        out.wait_for(r"worker started again", launcher, 60)
        assert chat_until_answered(f"http://127.0.0.1:{http_port}", timeout_s=600)
        assert child_running(launcher.pid, "services.worker", SF_TIER="small") != worker

        # The launcher is killed: everything it started stops, and the ports are free again.
        everything = sched.descendants(launcher.pid)
        started.extend(everything)
        assert len(everything) >= 8  # nats-server, vllm serve, seven services, engine processes
        launcher.kill()
        launcher.wait()
        assert wait_gone(everything, timeout_s=60) == set(), {p: cmdline(p) for p in everything if running(p)}
        assert port_is_free(http_port)
        assert port_is_free(int(nats_url.rsplit(":", 1)[1]))
    finally:
        launcher.kill()
        launcher.wait()
