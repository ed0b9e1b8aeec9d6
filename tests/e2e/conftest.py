"""End-to-end: the whole system as `make run` starts it, with the real vLLM CPU engine.

One stack (and so one engine, ~1 minute to start) serves the whole test session.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.stack import NATS_CONFIG, ROOT, Stack, free_port

MODEL_DIR = ROOT / ".models" / "SmolLM2-135M-Instruct"


@dataclass
class LiveSystem:
    stack: Stack
    base_url: str
    database_url: str
    nats_url: str


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSystem]:
    if not (MODEL_DIR / ".complete").exists():
        pytest.fail(f"{MODEL_DIR} is missing: run `make install` (converts the model once)")
    var: Path = tmp_path_factory.mktemp("e2e")
    db = f"sqlite+aiosqlite:///{var / 'ledger.db'}"
    stack = Stack(var_dir=var, env={
        "SF_DATABASE_URL": db, "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING",
        "SF_HEARTBEAT_INTERVAL_S": "0.5",
    })
    try:
        stack.start_nats(free_port())
        stack.start_service("accounting", "services.accounting")
        stack.start_service("cache", "services.cache", {"SF_QDRANT_PATH": str(var / "qdrant")})
        stack.start_service("worker", "services.worker")
        port = stack.start_ingress(free_port())
        stack.wait_ready(timeout_s=600, what="the vLLM worker")
        yield LiveSystem(stack, f"http://127.0.0.1:{port}", db, stack.nats_url)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def made_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSystem]:
    """The system as `make run` starts it: nats-server with its users and subject permissions
    (infra/nats/; the services connect as its services user, ``nats_url``; tenants as their own
    users at ``stack.public_nats_url``), accounting, the cache, the classifier, the batch service,
    the small tier's worker and ingress, each ready (``/readyz``) before the tests start.

    Not the large tier (`vllm serve` and its upstream worker): a second engine on this machine's
    cores; tests name the small tier's model. Its own engine, for the module only: ``live``'s
    nats-server has no users and it runs no batch service, and test_batch_e2e.py sorts before
    test_crash_recovery.py, whose engines must not run beside a session stack's."""
    if not (MODEL_DIR / ".complete").exists():
        pytest.fail(f"{MODEL_DIR} is missing: run `make install` (converts the model once)")
    var: Path = tmp_path_factory.mktemp("e2e-run")
    db = f"sqlite+aiosqlite:///{var / 'ledger.db'}"
    stack = Stack(var_dir=var, env={
        "SF_DATABASE_URL": db, "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING",
        "SF_HEARTBEAT_INTERVAL_S": "0.5", "SF_QDRANT_PATH": str(var / "qdrant"),
    })
    services = {"accounting": "services.accounting", "cache": "services.cache",
                "classifier": "services.classifier", "batch": "services.batch"}
    try:
        stack.start_nats(free_port(), config=NATS_CONFIG)
        for name, module in services.items():
            stack.start_service(name, module)
        stack.start_service("worker", "services.worker", {"SF_TIER": "small"})
        port = stack.start_ingress(free_port())
        stack.wait_ready(timeout_s=600, what="the vLLM worker", tiers=["small"])
        for name in services:
            health = stack.procs[name].health_port
            assert health is not None
            stack.wait_http(health, "/readyz", timeout_s=120, what=name)
        yield LiveSystem(stack, f"http://127.0.0.1:{port}", db, stack.nats_url)
    finally:
        stack.stop()
