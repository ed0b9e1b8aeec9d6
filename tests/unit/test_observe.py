"""What one request and one finished task tell the metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from contracts.subjects import Priority
from contracts.v1 import UsageEvent
from services.ingress.observe import Observation
from services.shared.metrics import observe_usage

pytestmark = pytest.mark.unit
EXAMPLE = Path(__file__).resolve().parents[1] / "examples/v1/usage_event.json"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_request_is_counted_once_with_its_status_and_leaves_the_inflight_gauge() -> None:
    labels = {"tenant": "unit-obs", "tier": "small", "priority": "interactive", "status": "200"}
    before = value("skinflint_requests_total", **labels)
    inflight = value("skinflint_inflight_requests", priority="interactive")
    obs = Observation(stream=True)
    obs.tenant, obs.tier = "unit-obs", "small"
    assert value("skinflint_inflight_requests", priority="interactive") == inflight + 1
    obs.first_token()
    obs.first_token()
    obs.finish(200)
    obs.finish(500)  # a late second report changes nothing
    assert value("skinflint_requests_total", **labels) == before + 1
    assert value("skinflint_requests_total", **{**labels, "status": "500"}) == 0
    assert value("skinflint_inflight_requests", priority="interactive") == inflight
    assert obs.first_token_s is not None and obs.first_token_s >= 0


def test_a_finished_task_counts_its_tokens_and_outcome() -> None:
    event = UsageEvent.model_validate({**json.loads(EXAMPLE.read_text()), "tier": "unit-tier",
                                       "priority": Priority.BULK, "status": "ok", "prompt_tokens": 10,
                                       "cached_prompt_tokens": 4, "completion_tokens": 7})
    observe_usage(event, "infer")
    observe_usage(event, "infer")
    assert value("skinflint_tokens_total", tier="unit-tier", priority="bulk", kind="prompt") == 20
    assert value("skinflint_tokens_total", tier="unit-tier", priority="bulk", kind="cached_prompt") == 8
    assert value("skinflint_tokens_total", tier="unit-tier", priority="bulk", kind="completion") == 14
    assert value("skinflint_stage_outcomes_total", stage="infer", priority="bulk", outcome="ok") >= 2
    assert value("skinflint_engine_duration_seconds_count", tier="unit-tier", priority="bulk") == 2
