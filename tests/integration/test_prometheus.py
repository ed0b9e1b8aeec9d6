"""A real Prometheus scrapes every service, started the way a user starts them, and the series
that dashboards and alerts are built on arrive with their labels.

Prometheus is Debian's ``prometheus`` package (``make test`` installs it when it can); without
the binary the test skips and says so. It runs on a free port with a store of its own, so a
system Prometheus the package may have started on :9090 is neither used nor disturbed. The
worker is the real worker service on the fake engine (``tests.support.fake_worker``): what is
proven here is the metrics' path, not vLLM.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from services.stack import ROOT, Stack, free_port, wait_for_port
from tests.integration.conftest import AUTH, chat

pytestmark = pytest.mark.integration

#: How long any one thing may take to show up (a scrape is every second).
WAIT_S = 30.0


@dataclass
class Prometheus:
    """Our own Prometheus server and its HTTP API."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def get(self, path: str, **params: str) -> Any:
        r = httpx.get(f"{self.url}{path}", params=params, timeout=5)
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's vector: ``[{"metric": {labels}, "value": [time, "value"]}, ...]``."""
        result: list[dict[str, Any]] = self.get("/api/v1/query", query=promql)["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.get("/api/v1/targets", state="active")["activeTargets"]
        return active

    def describe(self) -> str:
        """What Prometheus has, for a failure message: each target's health and the skinflint
        series it holds."""
        lines = ["targets:"]
        try:
            for t in self.targets():
                lines.append(f"  {t['labels'].get('service')} {t['scrapeUrl']}: {t['health']} "
                             f"{t.get('lastError') or ''}".rstrip())
            lines.append("series (histogram buckets left out):")
            for s in self.query('{__name__=~"skinflint_.*|up", __name__!~".*_bucket"}'):
                lines.append(f"  {json.dumps(s['metric'], sort_keys=True)} = {s['value'][1]}")
        except (httpx.HTTPError, AssertionError, KeyError) as exc:
            lines.append(f"  (Prometheus did not answer: {exc!r})")
        lines.append(f"log ({self.log_path}):")
        lines.extend("  " + line for line in self.log_path.read_text(errors="replace").splitlines()[-20:])
        return "\n".join(lines)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def scrape_config(targets: dict[str, str]) -> dict[str, Any]:
    """One job, a scrape a second, each target labelled with its service's name."""
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": "skinflint",
            "static_configs": [{"targets": [address], "labels": {"service": name}}
                               for name, address in sorted(targets.items())],
        }],
    }


def start_prometheus(binary: str, folder: Path, targets: dict[str, str]) -> Prometheus:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(targets), sort_keys=False))
    port = free_port()
    log_path = folder / "prometheus.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    prometheus = Prometheus(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_for_port(port, process, timeout_s=WAIT_S)
        until(lambda: httpx.get(f"{prometheus.url}/-/ready", timeout=2).status_code == 200,
              "Prometheus reports ready", prometheus)
    except BaseException:
        prometheus.stop()
        raise
    return prometheus


def until(check: Callable[[], bool], what: str, prometheus: Prometheus | None = None,
          timeout_s: float = WAIT_S) -> None:
    """Poll ``check`` (exceptions count as not yet) until it holds; fail naming ``what`` and
    showing what Prometheus has."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, AssertionError, KeyError, ValueError) as exc:
            last = exc
        time.sleep(0.25)
    seen = f"\nlast error: {last!r}" if last else ""
    shown = f"\n{prometheus.describe()}" if prometheus else ""
    pytest.fail(f"not within {timeout_s:.0f} s: {what}{seen}{shown}")


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip("the `prometheus` binary is not on PATH: `make prometheus` installs Debian's "
                    "package (needs root and apt-get), or `sudo apt-get install prometheus`")
    return found


@pytest.fixture
def running_stack(stack_factory: Callable[[], Stack]) -> Iterator[Stack]:
    """nats-server, accounting, a worker on the fake engine and ingress, as processes."""
    stack = stack_factory()
    stack.start_nats(free_port())
    stack.start_service("accounting", "services.accounting", {"SF_FETCH_TIMEOUT_S": "0.2"})
    stack.start_service("worker", "tests.support.fake_worker", {"SF_FAKE_SECONDS_PER_TOKEN": "0.01"})
    stack.start_ingress(free_port())
    for name, address in stack.metrics_targets().items():
        url = f"http://{address}/readyz"

        def ready(url: str = url) -> bool:
            return httpx.get(url, timeout=2).status_code == 200

        until(ready, f"{name} reports ready on {url}")
    yield stack


def values(prometheus: Prometheus, promql: str) -> dict[str, float]:
    """The vector of ``promql`` as {service label: value}."""
    return {s["metric"].get("service", ""): float(s["value"][1]) for s in prometheus.query(promql)}


def test_prometheus_scrapes_every_service_and_the_series_arrive(
    prometheus_binary: str, running_stack: Stack, tmp_path: Path
) -> None:
    targets = running_stack.metrics_targets()
    assert set(targets) == {"accounting", "worker", "ingress"}
    api = f"http://127.0.0.1:{running_stack.http_port}"
    with httpx.Client(base_url=api, headers=AUTH, timeout=30) as client:
        assert client.post("/v1/chat/completions", json=chat(max_tokens=4)).status_code == 200
        with client.stream("POST", "/v1/chat/completions", json=chat(max_tokens=4, stream=True)) as r:
            assert r.status_code == 200
            body = "".join(r.iter_text())
        assert body.rstrip().endswith("data: [DONE]"), body
        bad = client.post("/v1/chat/completions", json={"model": "smollm2-135m"})
        assert bad.status_code == 400, bad.text

    prometheus = start_prometheus(prometheus_binary, tmp_path / "prometheus", targets)
    try:
        def all_up() -> bool:
            found = {t["labels"]["service"]: t["health"] for t in prometheus.targets()}
            return found == dict.fromkeys(targets, "up")

        until(all_up, "every target is up in /api/v1/targets", prometheus)
        until(lambda: values(prometheus, 'up{job="skinflint"}') == dict.fromkeys(targets, 1.0),
              "up is 1 for every service", prometheus)

        # Each series comes from the service that owns it, with the labels dashboards group by.
        expected = {
            'skinflint_requests_total{tenant="demo",status="200",tier="small",priority="interactive"}':
                ("ingress", lambda v: v >= 2),
            'skinflint_requests_total{tenant="demo",status="400",tier="none"}': ("ingress", lambda v: v >= 1),
            'skinflint_time_to_first_token_seconds_count{tier="small"}': ("ingress", lambda v: v >= 1),
            'skinflint_tokens_total{kind="completion",tier="small"}': ("worker", lambda v: v >= 8),
            'skinflint_engine_slots{tier="small"}': ("worker", lambda v: v >= 1),
            'skinflint_stage_outcomes_total{stage="infer",outcome="ok"}': ("worker", lambda v: v >= 2),
            'skinflint_cost_usd_total{kind="actual",tenant="demo",tier="small"}': ("accounting", lambda v: v > 0),
            'skinflint_cost_usd_total{kind="reference",tenant="demo",tier="small"}':
                ("accounting", lambda v: v > 0),
            'skinflint_usage_events_total{outcome="recorded"}': ("accounting", lambda v: v >= 2),
        }
        for promql, (service, holds) in expected.items():
            def arrived(promql: str = promql, service: str = service, holds: Callable[[float], bool] = holds) -> bool:
                found = values(prometheus, f"sum by (service) ({promql})")
                return set(found) == {service} and holds(found[service])

            until(arrived, f"{promql} from {service}", prometheus)

        # The counterfactual (a named model's own tier, uncached) costs at least what was charged.
        actual = values(prometheus, 'sum(skinflint_cost_usd_total{kind="actual",tenant="demo"})')[""]
        reference = values(prometheus, 'sum(skinflint_cost_usd_total{kind="reference",tenant="demo"})')[""]
        assert reference >= actual > 0, prometheus.describe()
    finally:
        prometheus.stop()
    assert prometheus.process.returncode == 0, prometheus.describe()


def test_the_production_scrape_config_is_valid() -> None:
    """infra/prometheus/prometheus.yml (docker-compose's Prometheus) as Prometheus' own checker
    reads it; its targets come from Docker's DNS, so only the file is checked here."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("the `promtool` binary (Debian's prometheus package) is not on PATH: `make prometheus`")
    config = ROOT / "infra/prometheus/prometheus.yml"
    checked = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
