"""End-to-end: the whole system as `make run` starts it, with the real vLLM CPU engine.

One stack (and so one engine, ~1 minute to start) serves the whole test session.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.stack import ROOT, Stack, free_port

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
