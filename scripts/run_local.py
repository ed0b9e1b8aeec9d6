"""`make run`: nats-server, accounting, the cache, the classifier, the batch service, the workers
and ingress on this machine; Ctrl-C stops all.

nats-server runs with infra/nats/nats.conf: its users and subject permissions (infra/nats/README.md).
The services connect as its services user, with SF_NATS_SERVICE_PASSWORD or, when that is not set,
a password drawn for this run; tenants' bulk jobs come in as users.conf's tenant users.

A supervisor: a process that stops on its own is started again (after 1 s, doubling up to 30 s
while it keeps failing soon after each start), and what it left running (a worker's engine
processes) is killed first; one that stops because its configuration is wrong (exit code 78)
stops everything. If the launcher itself dies, everything it started gets SIGTERM.

Environment: SF_PORT (HTTP port, default 8000), SF_NATS_PORT (default 4222; a free port is used
if that one is taken), SF_NATS_SERVICE_PASSWORD (default: a random one per run), SF_VAR_DIR
(logs, ledger and JetStream store; default var/), SF_VERBOSE=1 (echo every line, not only the
services' own; all lines are in the logs either way), and any SF_* setting of the services (see
services/*/settings.py).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.shared.sched import cpu_list
from services.shared.settings import ConfigError, load_settings
from services.shared.tiers import TiersFile, load_tiers
from services.stack import NATS_CONFIG, NATS_PASSWORD_PATTERN, ROOT, Stack, printer

BANNER = """
  skinflint is up.
    OpenAI base URL : http://127.0.0.1:{port}/v1      (API key: sk-skinflint-demo)
    Try             : curl -s http://127.0.0.1:{port}/v1/chat/completions \\
                        -H 'Authorization: Bearer sk-skinflint-demo' -H 'Content-Type: application/json' \\
                        -d '{{"model":"auto",
                             "messages":[{{"role":"user","content":"Name the capital city of France."}}]}}'
    Models          : auto (routed: the cheapest tier expected to answer well), {models}
    Demo            : make demo
    Usage table     : curl -s 'http://127.0.0.1:{port}/v1/usage?format=table' \\
                        -H 'Authorization: Bearer sk-skinflint-demo'
    Bus (bulk jobs) : {nats}  user demo, password sf-bus-demo-dev, inbox_prefix _INBOX_demo
                      (publish on sf.v1.bulk.in.demo.<job>: infra/nats/README.md)
    Logs            : {log}/*.log      Spans: {log}/traces-*.jsonl
  A service that stops is started again. Ctrl-C stops everything (services drain first).
"""


class LauncherSettings(BaseSettings):
    """`make run`'s own settings; the services read theirs from the same environment."""

    model_config = SettingsConfigDict(env_prefix="SF_", extra="ignore")

    port: int = Field(default=8000, ge=1, le=65535, description="Ingress's HTTP port.")
    nats_port: int = Field(default=4222, ge=1, le=65535,
                           description="nats-server's port (a free one when it is taken).")
    var_dir: Path = Field(default=ROOT / "var", description="Logs, the SQLite ledger, JetStream's store.")
    nats_service_password: str | None = Field(
        default=None, pattern=NATS_PASSWORD_PATTERN,
        description="The services' password on nats-server (letters, digits, - . _ ~; default: a random one per run).")
    verbose: bool = Field(default=False, description="Echo every line, not only the services' own.")
    tiers_file: str = Field(default="infra/config/tiers.yaml", description="The tiers every service reads.")
    local_upstream: str = Field(
        default="large",
        description="An upstream tier whose provider `make run` starts itself: `vllm serve` on the port of the "
                    "tier's base_url (empty: none; the tier's workers call the provider it names).")


def workers(tiers: TiersFile) -> dict[str, str]:
    """One worker per tier: process name -> tier. The first self-hosted tier's is plain "worker"."""
    names: dict[str, str] = {}
    for tier, config in tiers.tiers.items():
        first_engine = config.kind == "vllm" and "worker" not in names
        names["worker" if first_engine else f"worker-{tier}"] = tier
    return names


def local_provider_port(tiers: TiersFile, tier: str, source: str) -> int:
    """The port `vllm serve` listens on for ``tier``: its base_url's, which must be on this machine."""
    config = tiers.tiers.get(tier)
    if config is None or config.upstream is None:
        raise ConfigError(f"SF_LOCAL_UPSTREAM: {tier!r} is not an upstream tier in {source}")
    url = urlsplit(config.upstream.base_url)
    if url.hostname not in ("127.0.0.1", "localhost") or url.port is None:
        raise ConfigError(f"SF_LOCAL_UPSTREAM: tier {tier!r} calls {config.upstream.base_url}, not a port on this "
                          "machine; set SF_LOCAL_UPSTREAM= (empty) when the tier calls a real provider")
    return url.port


def main() -> None:
    try:
        settings = load_settings(LauncherSettings)
        tiers = load_tiers(settings.tiers_file)
        provider_port = local_provider_port(tiers, settings.local_upstream, settings.tiers_file) \
            if settings.local_upstream else None
    except ConfigError as exc:
        print(f"==> {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    var = settings.var_dir.resolve()
    http_port = settings.port
    stack = Stack(var_dir=var, echo=printer(everything=settings.verbose),
                  env={"SF_OTEL_EXPORTER": os.environ.get("SF_OTEL_EXPORTER", "console"),
                       "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
                       "HF_HUB_OFFLINE": "1"})
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stack.start_nats(settings.nats_port, config=NATS_CONFIG, service_password=settings.nats_service_password)
        print(f"==> nats-server with JetStream at {stack.public_nats_url} (users: infra/nats/users.conf)", flush=True)
        if provider_port is not None:
            stack.start_vllm_serve(provider_port)
            print(f"==> vllm serve for tier {settings.local_upstream!r} on port {provider_port}", flush=True)
        services: list[tuple[str, str, dict[str, str]]] = [("accounting", "services.accounting", {}),
                                                           ("cache", "services.cache", {})]
        if tiers.routing is not None:
            services.append(("classifier", "services.classifier", {}))
        services.append(("batch", "services.batch", {}))
        services += [(name, "services.worker", {"SF_TIER": tier}) for name, tier in workers(tiers).items()]
        for name, module, extra in services:
            stack.start_service(name, module, {"SF_OTEL_CONSOLE_PATH": str(var / "log" / f"traces-{name}.jsonl"),
                                               "SF_QDRANT_PATH": str(var / "qdrant"), **extra})
        stack.start_ingress(http_port, {"SF_OTEL_CONSOLE_PATH": str(var / "log" / "traces-ingress.jsonl")})
        print("==> waiting for the workers to load their models (about a minute on CPU)", flush=True)
        stack.wait_ready(timeout_s=600, what="the workers", tiers=tiers.tiers)
        if provider_port is not None:
            stack.wait_http(provider_port, "/health", timeout_s=600, what="vllm serve")
        if stack.request_path_cpus:
            print(f"==> nats-server and the services run on CPU {cpu_list(stack.request_path_cpus)}, "
                  "off the cores vLLM computes on", flush=True)
        print(BANNER.format(port=http_port, log=var / "log", models=", ".join(tiers.models),
                            nats=stack.public_nats_url), flush=True)
        while not stop.wait(1.0):
            for event in stack.supervise_once():
                print(f"==> {event}", flush=True)
    except RuntimeError as exc:
        print(f"==> {exc}", file=sys.stderr, flush=True)
        stack.stop()
        sys.exit(1)
    print("\n==> stopping: services drain in-flight requests first", flush=True)
    stack.stop()
    print("==> stopped", flush=True)


if __name__ == "__main__":
    main()
