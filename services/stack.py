"""Run the whole system on one machine as separate processes: nats-server and every service.

Used by ``make run`` (scripts/run_local.py), the end-to-end tests and the benchmarks, so all
three start skinflint exactly the way a user does.

Every process started here from the main thread gets SIGTERM when the launcher ends, however it
dies (``services.shared.lifeline``), and runs in a process group of its own, which is killed once
it has stopped: what it started (a worker's engine processes) goes with it. A caller
that wants processes that stop on their own started again calls ``supervise_once`` every second
or so (``make run`` does; tests that kill a process on purpose do not).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from services.nats_local import (
    NATS_CONFIG,
    NATS_PASSWORD_PATTERN,
    NATS_SERVICE_PASSWORD_ENV,
    NATS_SERVICE_USER,
    nats_server_argv,
    nats_server_binary,
    nats_url,
)
from services.restarts import Backoff, exit_reason, restartable
from services.shared import lifeline, sched
from services.shared.settings import ServiceSettings, env_name

ROOT = Path(__file__).resolve().parent.parent
__all__ = ["NATS_CONFIG", "NATS_PASSWORD_PATTERN", "NATS_SERVICE_PASSWORD_ENV", "NATS_SERVICE_USER", "ROOT", "Proc",
           "ServiceStopped", "Stack", "free_port", "nats_server_argv", "nats_server_binary", "nats_url",
           "port_is_free", "printer", "runs_engine", "wait_for_port"]


#: Ports ``free_port`` has handed out in this process: a port promised to a process that has not
#: bound it yet is free to the kernel, and must not be promised to a second one.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and never one this process was given before (a service is
    told its port before it binds it; handing the same port to ingress too made one of them fail)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now. Connections of a server that stopped a
    moment ago, waiting out TCP's TIME_WAIT, do not count: servers (nats-server, uvicorn) bind
    with SO_REUSEADDR, and so does this check."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


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
    """One process of a stack, and what it takes to start it again the same way."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    argv: list[str] = field(default_factory=list)
    #: The environment it was given over the stack's (ports included).
    env: dict[str, str] = field(default_factory=dict)
    #: Where its /healthz, /readyz and /metrics are served (ingress: its HTTP port).
    health_port: int | None = None
    started_at: float = field(default_factory=time.monotonic)
    #: Its last lines of output.
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    pump: threading.Thread | None = None

    def last_line(self) -> str:
        """Its last line of output, once what it wrote before it stopped has been read."""
        if self.pump is not None:
            self.pump.join(timeout=2)
        return next((line for line in reversed(self.tail) if line.strip()), "(no output)")


def runs_engine(name: str) -> bool:
    """Whether the process named ``name`` runs an inference engine (workers, vLLM's own server):
    the request path's processes are kept off the cores engines compute on."""
    return name.startswith(("worker", "vllm"))


class ServiceStopped(RuntimeError):
    """A process stopped in a way that restarting would not mend (its configuration is wrong)."""


@dataclass
class Stack:
    """Processes of one local deployment. ``start_*`` methods return once each is ready."""

    var_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    echo: Callable[[str, str], None] | None = None
    procs: dict[str, Proc] = field(default_factory=dict)
    #: Where the services reach the bus, with the services user's credentials when it has users.
    nats_url: str = ""
    #: The same without credentials: what may be printed.
    public_nats_url: str = ""
    http_port: int = 0
    #: Where ``wait_ready`` put the processes started here, but the workers (empty: anywhere).
    request_path_cpus: frozenset[int] = frozenset()
    #: The restart policy of each process that ``supervise_once`` starts again.
    backoff: Callable[[], Backoff] = Backoff
    _backoffs: dict[str, Backoff] = field(default_factory=dict, init=False, repr=False)
    #: Processes to start again, and when (``time.monotonic()``).
    _due: dict[str, float] = field(default_factory=dict, init=False, repr=False)

    def _spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> Proc:
        log_dir = self.var_dir / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        extra = dict(extra_env or {})
        # Each stack keeps its ledger in its own folder unless told otherwise.
        env = {"SF_DATABASE_URL": f"sqlite+aiosqlite:///{self.var_dir / 'skinflint.db'}",
               **os.environ, **self.env, **extra}
        env["PYTHONUNBUFFERED"] = "1"
        # SIGTERM, not SIGKILL, when the launcher dies: a service drains and stops what it started.
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=lifeline.die_with_parent_preexec(signal.SIGTERM))
        handle = Proc(name, proc, log_path, argv=list(argv), env=extra)
        handle.pump = threading.Thread(target=self._pump, args=(handle,), daemon=True)
        handle.pump.start()
        self.procs[name] = handle
        return handle

    def _pump(self, proc: Proc) -> None:
        assert proc.process.stdout is not None
        with open(proc.log_path, "ab") as log:
            for raw in iter(proc.process.stdout.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").rstrip()
                proc.tail.append(line)
                if self.echo is not None:
                    self.echo(proc.name, line)

    def start_nats(self, port: int = 4222, config: Path | None = None, service_password: str | None = None) -> str:
        """Our own nats-server with JetStream on ``port`` (or a free one if that is taken).

        Bare by default: anyone may connect and do anything. With ``config`` (``NATS_CONFIG``) it
        has that configuration's users and permissions, and the services connect as
        ``NATS_SERVICE_USER`` with ``service_password`` (a random one when None): it is in
        ``nats_url`` and SF_NATS_URL, so print ``public_nats_url`` instead. Returns ``nats_url``."""
        if not port_is_free(port):
            port = free_port()
        store = self.var_dir / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        extra: dict[str, str] = {}
        if config is not None:
            service_password = service_password or secrets.token_urlsafe(24)
            extra[NATS_SERVICE_PASSWORD_ENV] = service_password
        proc = self._spawn("nats", nats_server_argv(port, store, config), extra)
        wait_for_port(port, proc.process, 15)
        self._nats_slice(proc)
        self.public_nats_url = nats_url(port)
        self.nats_url = nats_url(port, NATS_SERVICE_USER, service_password) if config is not None \
            else self.public_nats_url
        self.env["SF_NATS_URL"] = self.nats_url
        return self.nats_url

    def _nats_slice(self, proc: Proc) -> None:
        # nats-server is on every request's path twice: it gets the services' short slices.
        sched.apply_request_path_slice(self._service_settings().sched_slice_us, "nats-server", proc.process.pid)

    def start_service(self, name: str, module: str, extra_env: dict[str, str] | None = None) -> Proc:
        """``python -m module``. Every service but ingress (which serves them on its HTTP port)
        gets a free port for its health and metrics endpoints (``SF_HEALTH_PORT``), unless
        ``extra_env`` names one."""
        env = dict(extra_env or {})
        if module != "services.ingress":
            env.setdefault("SF_HEALTH_PORT", str(free_port()))
        proc = self._spawn(name, [sys.executable, "-m", module], env)
        if "SF_HEALTH_PORT" in env:
            proc.health_port = int(env["SF_HEALTH_PORT"])
        return proc

    def start_ingress(self, port: int = 8000, extra_env: dict[str, str] | None = None,
                      timeout_s: float = 30) -> int:
        if not port_is_free(port):
            raise RuntimeError(f"port {port} is taken; set SF_PORT to another one")
        env = {"SF_PORT": str(port), **(extra_env or {})}
        proc = self.start_service("ingress", "services.ingress", env)
        proc.health_port = port
        wait_for_port(port, proc.process, timeout_s)
        self.http_port = port
        return port

    def start_vllm_serve(self, port: int, name: str = "vllm-serve") -> Proc:
        """vLLM's own OpenAI-compatible server (``scripts/vllm_serve.py``) on ``port``: the provider
        of an upstream tier served on this machine. Its /metrics is a scrape target like the
        services'. ``wait_http`` tells when it answers."""
        if not port_is_free(port):
            raise RuntimeError(f"port {port} is taken; {name} needs it (the upstream tier's base_url)")
        proc = self._spawn(name, [sys.executable, str(ROOT / "scripts" / "vllm_serve.py"), "--port", str(port)])
        proc.health_port = port
        return proc

    def wait_http(self, port: int, path: str, timeout_s: float, what: str) -> None:
        """Wait until ``GET path`` on ``port`` answers 200, while every process stays alive."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{what} did not answer within {timeout_s:.0f} s; see {self.var_dir}/log")

    def wait_ready(self, timeout_s: float = 300, what: str = "a worker",
                   tiers: Collection[str] = ()) -> None:
        """Wait until ingress reports live workers (the model is loaded): of every tier in
        ``tiers`` when given, else any."""
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.http_port}/readyz"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                response = httpx.get(url, timeout=2)
                live = {w.get("tier") for w in response.json().get("workers", [])}
                if response.status_code == 200 and set(tiers) <= live:
                    self.request_path_cpus = self.keep_off_engine_cpus()
                    return
            except (httpx.HTTPError, ValueError, AttributeError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{what} did not become ready within {timeout_s:.0f} s; see {self.var_dir}/log")

    def keep_off_engine_cpus(self) -> frozenset[int]:
        """Pin the processes started here, but the workers, to the CPUs the workers' engines
        leave free (each worker does that for itself). Returns those CPUs (empty: nothing to do)."""
        workers = [p.process.pid for name, p in self.procs.items() if runs_engine(name)]
        others = {name: p.process.pid for name, p in self.procs.items() if not runs_engine(name)}
        if not self._service_settings().sched_keep_off_engine_cpus or not workers or not others:
            return frozenset()
        return sched.keep_off_engine_cpus(", ".join(others), list(others.values()), owners=workers)

    def _service_settings(self) -> ServiceSettings:
        """The settings every service of this stack reads: the environment, with ``env`` over it."""
        ours: dict[str, Any] = {name: self.env[env_name(name)] for name in ServiceSettings.model_fields
                                if env_name(name) in self.env}
        return ServiceSettings(**ours)

    def metrics_targets(self) -> dict[str, str]:
        """Prometheus scrape targets: process name -> ``127.0.0.1:port`` of its ``/metrics``
        (nats-server has none)."""
        return {name: f"127.0.0.1:{proc.health_port}" for name, proc in self.procs.items()
                if proc.health_port is not None}

    def check_alive(self) -> None:
        for proc in self.procs.values():
            code = proc.process.poll()
            if code is not None:
                raise self._stopped_error(proc, code)

    def _stopped_error(self, proc: Proc, code: int) -> RuntimeError:
        if not restartable(code):
            return ServiceStopped(f"{proc.name} {exit_reason(code)}, its configuration is wrong: "
                                  f"{proc.last_line()}")
        return RuntimeError(f"{proc.name} {exit_reason(code)}; see {proc.log_path}")

    def supervise_once(self) -> list[str]:
        """Look after every process once. One that has stopped on its own is logged, what is
        left of its process group (a worker's engine processes) is killed, and it is started
        again with the same command and environment (ports included) after a backoff
        (``services.restarts.Backoff``). Call it every second or so, from the thread that
        started the stack (children are bound to that thread's life). Returns what happened,
        a line each. Raises ``ServiceStopped`` for a process whose configuration is wrong."""
        now = time.monotonic()
        events = []
        for name, proc in list(self.procs.items()):
            code = proc.process.poll()
            if code is None or name in self._due:
                continue
            self._kill_group(proc)
            if not restartable(code):
                raise self._stopped_error(proc, code)
            delay = self._backoffs.setdefault(name, self.backoff()).delay_s(now - proc.started_at)
            self._due[name] = now + delay
            events.append(f"{name} {exit_reason(code)} (see {proc.log_path}); starting it again in {delay:g} s")
        for name, due in list(self._due.items()):
            if due <= now:
                del self._due[name]
                proc = self._restart(self.procs[name])
                events.append(f"{name} started again (pid {proc.process.pid})")
        return events

    def _restart(self, old: Proc) -> Proc:
        proc = self._spawn(old.name, old.argv, old.env)
        proc.health_port = old.health_port
        if old.name == "nats":
            self._nats_slice(proc)
        if self.request_path_cpus and not runs_engine(old.name):
            with contextlib.suppress(OSError):
                sched.pin_process(proc.process.pid, self.request_path_cpus)
        return proc

    @staticmethod
    def _kill_group(proc: Proc) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.process.pid, signal.SIGKILL)

    def stop_one(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 40) -> int | None:
        proc = self.procs.pop(name, None)
        self._due.pop(name, None)
        if proc is None:
            return None
        if proc.process.poll() is not None:
            self._kill_group(proc)  # what it left behind
            return proc.process.returncode
        # The service itself gets the signal (it drains, then stops vLLM's engine processes in
        # order); only if it does not exit in time is its whole process group killed.
        proc.process.send_signal(sig)
        try:
            return proc.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._kill_group(proc)
            return proc.process.wait()
        finally:
            if sig == signal.SIGKILL:
                # A killed service cannot stop its children: take the group down with it.
                self._kill_group(proc)

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
    colours = {"nats": 90, "ingress": 36, "worker": 35, "accounting": 33, "cache": 32, "classifier": 34,
               "batch": 94, "worker-large": 95, "vllm-serve": 95}
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
