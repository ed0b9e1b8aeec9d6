"""A whole skinflint as processes for batch fault tests: nats-server, accounting, the batch
service, a fake-engine worker and ingress, each started the way a user starts it
(``services.stack.Stack``), killed with a signal and started again by the stack's supervisor.

Also what those tests check a finished job against: its output and error files read through the
``openai`` SDK, and the ledger (accounting's SQLite ``usage_records``) priced with the price book
the stack uses.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
from openai.types import Batch

from services.accounting.pricing import PriceBook
from services.restarts import Backoff
from services.shared.settings import load_config_file
from services.stack import ROOT, Stack, free_port
from tests.support.config import TEST_TIERS

DEMO_KEY = "sk-skinflint-demo"
PRICEBOOK = ROOT / "infra/config/pricebook.yaml"
T = TypeVar("T")


def stack_env(**overrides: str) -> dict[str, str]:
    """Settings every process of the stack reads. Inference is the only stage (no embedding model
    to load); a killed worker's bulk tasks come back after 5 s instead of a minute."""
    return {
        "SF_HEARTBEAT_INTERVAL_S": "0.3",
        "SF_WORKER_LIVENESS_S": "1.5",
        "SF_TIERS_FILE": TEST_TIERS,
        "SF_PRICEBOOK_FILE": str(PRICEBOOK),
        "SF_PIPELINE": '["infer"]',
        "SF_OPTIONAL_STAGES": "[]",
        "SF_OTEL_EXPORTER": "none",
        "SF_BULK_ACK_WAIT_S": "5",
        "SF_BATCH_MAX_IN_FLIGHT": "12",
        "SF_BATCH_SWEEP_INTERVAL_S": "0.5",
        **overrides,
    }


@dataclass
class BatchStack:
    """The processes, an SDK client on ingress, and the ledger's file."""

    stack: Stack
    sdk: openai.OpenAI

    @property
    def ledger_path(self) -> Path:
        return self.stack.var_dir / "skinflint.db"

    @classmethod
    def start(cls, var_dir: Path, worker_env: dict[str, str] | None = None, **env: str) -> BatchStack:
        stack = Stack(var_dir=var_dir, env=stack_env(**env),
                      backoff=lambda: Backoff(first_s=0.2, max_s=1.0, healthy_after_s=60))
        stack.start_nats(free_port())
        stack.start_service("accounting", "services.accounting")
        stack.start_service("batch", "services.batch")
        stack.start_service("worker", "tests.support.fake_worker", {
            "SF_FAKE_SECONDS_PER_TOKEN": "0.05", "SF_MAX_NUM_SEQS": "8", "SF_INTERACTIVE_RESERVE": "1",
            **(worker_env or {})})
        port = stack.start_ingress(free_port())
        sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=DEMO_KEY, max_retries=0, timeout=15)
        bs = cls(stack, sdk)
        try:
            bs.wait_ready()
        except BaseException:
            stack.stop()
            raise
        return bs

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Ingress sees a live worker; the batch service and accounting are connected."""
        self.stack.wait_ready(timeout_s=timeout_s, what="the fake worker")
        for name in ("batch", "accounting"):
            port = self.stack.procs[name].health_port
            assert port is not None
            self.stack.wait_http(port, "/readyz", timeout_s, name)

    def stop(self) -> None:
        self.sdk.close()
        self.stack.stop()

    # -- faults ------------------------------------------------------------------------------------

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to process ``name`` (not its group: the service itself dies); its pid."""
        pid = self.stack.procs[name].process.pid
        os.kill(pid, sig)
        return pid

    def wait_dead(self, name: str, timeout_s: float = 20) -> None:
        process = self.stack.procs[name].process
        try:
            process.wait(timeout=timeout_s)
        except Exception as exc:
            raise AssertionError(f"{name} (pid {process.pid}) still runs {timeout_s} s after the signal") from exc

    def restart(self, name: str, timeout_s: float = 30) -> list[str]:
        """Let the stack's supervisor (``make run``'s) start ``name`` again; its events."""
        self.wait_dead(name)
        events: list[str] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            events += self.stack.supervise_once()
            if any(e.startswith(f"{name} started again") for e in events):
                return events
            time.sleep(0.05)
        raise AssertionError(f"the supervisor did not start {name} again in {timeout_s} s: {events}")

    def log(self, name: str, lines: int = 40) -> str:
        path = self.stack.var_dir / "log" / f"{name}.log"
        if not path.exists():
            return f"({path} missing)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def logs(self) -> str:
        """The last lines of every process's log, for a failure message."""
        return "\n".join(f"--- {name} ---\n{self.log(name)}" for name in ("batch", "worker", "ingress", "accounting",
                                                                           "nats"))

    def readyz(self, name: str) -> dict[str, Any]:
        """What process ``name`` reports on /readyz (ingress: the workers it sees)."""
        port = self.stack.http_port if name == "ingress" else self.stack.procs[name].health_port
        body: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
        return body

    def wait_busy(self) -> None:
        """Until the batch service has items handed on and waiting for their result, and the
        worker (as its last heartbeat told ingress) is generating some: a fault now strikes work
        in flight."""
        def probe() -> bool | None:
            batch_holds = self.readyz("batch").get("items_in_flight", 0) > 0
            worker_runs = any(w.get("inflight", 0) > 0 for w in self.readyz("ingress").get("workers", []))
            return True if batch_holds and worker_runs else None

        self.wait_for("items in flight in the batch service and the worker", probe, timeout_s=30)

    # -- the job through the SDK ---------------------------------------------------------------------

    def submit(self, lines: list[bytes], metadata: dict[str, str] | None = None) -> Batch:
        data = b"".join(line + b"\n" for line in lines)
        uploaded = self.sdk.files.create(file=("input.jsonl", io.BytesIO(data)), purpose="batch")
        return self.sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                       completion_window="24h", metadata=metadata)

    def retrieve(self, batch_id: str) -> Batch:
        return self.sdk.batches.retrieve(batch_id)

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout_s: float,
                 tolerate: tuple[type[BaseException], ...] = ()) -> T:
        """Poll ``probe`` until it returns something (not None); ``tolerate`` the errors listed
        meanwhile (ingress away). Fails naming ``what`` with the services' last log lines."""
        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            try:
                got = probe()
            except tolerate as exc:
                last = exc
            else:
                if got is not None:
                    return got
            time.sleep(0.1)
        raise AssertionError(f"{what}: not within {timeout_s:.0f} s (last error: {last!r})\n{self.logs()}")

    def wait_completed_items(self, batch_id: str, at_least: int, timeout_s: float = 60) -> Batch:
        """The batch once ``at_least`` items are answered and it is still running."""
        def probe() -> Batch | None:
            batch = self.retrieve(batch_id)
            counts = batch.request_counts
            assert batch.status in ("validating", "in_progress"), f"the job ended too early: {batch.status} {counts}"
            return batch if counts is not None and counts.completed >= at_least else None

        return self.wait_for(f"{at_least} items of {batch_id} answered", probe, timeout_s)

    def wait_terminal(self, batch_id: str, timeout_s: float = 120) -> Batch:
        def probe() -> Batch | None:
            batch = self.retrieve(batch_id)
            return batch if batch.status in ("completed", "failed", "expired", "cancelled") else None

        return self.wait_for(f"batch {batch_id} finished", probe, timeout_s,
                             tolerate=(openai.APIConnectionError, openai.InternalServerError))

    def file_lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        text = self.sdk.files.content(file_id).text
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def usage_requests(self, batch_id: str) -> int:
        """Requests GET /v1/usage?job_id= counts for the batch (the demo tenant's)."""
        r = httpx.get(f"http://127.0.0.1:{self.stack.http_port}/v1/usage", params={"job_id": batch_id},
                      headers={"Authorization": f"Bearer {DEMO_KEY}"}, timeout=10)
        assert r.status_code == 200, r.text
        return sum(int(row["requests"]) for row in r.json()["rows"])

    # -- the ledger ----------------------------------------------------------------------------------

    def ledger_rows(self, batch_id: str) -> list[dict[str, Any]]:
        """Accounting's rows for the batch's items (request id ``<batch id>-<index>``)."""
        if not self.ledger_path.exists():
            return []
        with sqlite3.connect(f"file:{self.ledger_path}?mode=ro", uri=True, timeout=10) as db:
            db.row_factory = sqlite3.Row
            try:
                rows = db.execute("SELECT * FROM usage_records WHERE request_id LIKE ? ESCAPE '\\'",
                                  (batch_id.replace("_", "\\_") + "-%",)).fetchall()
            except sqlite3.OperationalError:
                return []  # accounting has not made its tables yet
        return [dict(row) for row in rows if re.fullmatch(re.escape(batch_id) + r"-\d+", row["request_id"])]

    def wait_ledger(self, batch_id: str, items: int, timeout_s: float = 30) -> list[dict[str, Any]]:
        """The batch's ledger rows once there are at least ``items`` of them."""
        return self.wait_for(f"{items} ledger rows of {batch_id}",
                             lambda: rows if len(rows := self.ledger_rows(batch_id)) >= items else None, timeout_s)


def pricebook() -> PriceBook:
    return load_config_file(str(PRICEBOOK), PriceBook)


def bulk_charge(row: dict[str, Any], book: PriceBook) -> tuple[int, int]:
    """(cost, bulk saving) in nano-dollars of a ledger row's tokens on its tier at bulk priority."""
    price = book.tiers[row["tier"]]
    cached = min(row["cached_prompt_tokens"], row["prompt_tokens"])
    full = ((row["prompt_tokens"] - cached) * price.input_per_mtok + cached * price.cached_input_per_mtok
            + row["completion_tokens"] * price.output_per_mtok)

    def nanos(per_mtok: Decimal) -> int:
        return int((per_mtok * 1000).to_integral_value(rounding=ROUND_HALF_EVEN))

    cost = nanos(full * price.batch_discount)
    return cost, nanos(full) - cost
