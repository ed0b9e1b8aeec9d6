"""Routing on the real request path: ingress, the classifier stage with the trained policy and the
real embedder, workers of two tiers (fake engines), nats-server; the decision in the response,
the usage event and the trace; a named model bypasses routing; fallback while a tier is down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from oteltap import OtelTapHttpProtobufReceiver, OtelTapHttpProtobufReceiverSettings

from services.stack import Stack, free_port
from tests.integration.conftest import AUTH, NatsServer, running_classifier, running_ingress, running_worker
from tests.support.usage_stream import usage_events, usage_stream

pytestmark = pytest.mark.integration

EASY = "Can you recommend a good book to read this weekend?"
HARD = ("Find the number of ordered pairs (x, y) of integers with -100 <= x, y <= 100 such that "
        "12x^2 - xy - 6y^2 = 0. Reason step by step.")


def tiers_config(fallback: bool = True, cascade: bool = False) -> dict[str, Any]:
    """small and large, both self-hosted here (fake engines); the shipped learned policy."""
    large: dict[str, Any] = {"kind": "vllm", "model": "big-model"}
    if fallback:
        large["fallback"] = "small"
    return {"tiers": {"small": {"kind": "vllm", "model": "smollm2-135m"}, "large": large},
            "models": {"smollm2-135m": {"tier": "small"}, "big-model": {"tier": "large"}},
            "routing": {"weak": "small", "strong": "large", "default_tier": "large",
                        "rules": [{"name": "pro-plan", "tier": "large", "tenant_class": ["pro"]}],
                        "policy": {"kind": "learned"}, "cascade": {"enabled": cascade}}}


@pytest.fixture
def tiers(tmp_path: Path) -> Path:
    path = tmp_path / "tiers.yaml"
    path.write_text(yaml.safe_dump(tiers_config()))
    return path


@pytest.fixture
def tenants(tmp_path: Path) -> Path:
    root = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((root / "infra/config/tenants.yaml").read_text())
    config["tenants"].append({"name": "pro-co", "keys": [{"id": "pro-dev", "key": "sk-skinflint-pro"}],
                              "routing": {"class": "pro"}})
    config["tenants"].append({"name": "all-co", "keys": [{"id": "all-dev", "key": "sk-skinflint-all"}],
                              "routing": {"mode": "all"}})
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@asynccontextmanager
async def routed_stack(nats_url: str, tiers: Path, tenants: Path, *, classifier: bool = True,
                       worker_tiers: tuple[str, ...] = ("small", "large"),
                       **small: Any) -> AsyncIterator[httpx.AsyncClient]:
    """``small``: settings of the small tier's worker."""
    async with AsyncExitStack() as stack:
        for tier in worker_tiers:
            await stack.enter_async_context(running_worker(nats_url, tier=tier, tiers_file=str(tiers),
                                                           **(small if tier == "small" else {})))
        if classifier:
            await stack.enter_async_context(running_classifier(nats_url, tiers))
        _, client = await stack.enter_async_context(running_ingress(
            nats_url, tiers_file=str(tiers), tenants_file=str(tenants), pipeline=["classifier", "infer"],
            optional_stages=["classifier"]))
        yield client


def ask(content: str, model: str = "auto", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **fields}


async def test_auto_sends_an_easy_question_to_the_small_tier_and_a_hard_one_to_the_large(
    nats_server: NatsServer, tiers: Path, tenants: Path
) -> None:
    async with routed_stack(nats_server.url, tiers, tenants) as client:
        models = {m["id"]: m["tier"] for m in (await client.get("/v1/models")).json()["data"]}
        easy = await client.post("/v1/chat/completions", json=ask(EASY))
        hard = await client.post("/v1/chat/completions", json=ask(HARD))
        streamed = await client.post("/v1/chat/completions", json=ask(HARD, stream=True))
    assert models == {"auto": "auto", "smollm2-135m": "small", "big-model": "large"}
    assert easy.status_code == hard.status_code == streamed.status_code == 200, (easy.text, hard.text)
    assert (easy.headers["x-skinflint-tier"], easy.json()["model"]) == ("small", "smollm2-135m")
    assert (hard.headers["x-skinflint-tier"], hard.json()["model"]) == ("large", "big-model")
    assert streamed.headers["x-skinflint-tier"] == "large"
    assert '"model":"big-model"' in streamed.text.replace(" ", "")
    events = await usage_events(nats_server.url)
    for response, tier in ((easy, "small"), (hard, "large")):
        event = events[response.headers["x-request-id"]]
        assert (event["tier"], event["counterfactual_tier"], event["route_policy"]) == (tier, "large", "learned")
        assert 0 <= event["route_score"] <= 1 and 0 < event["route_threshold"] < 1
        assert (event["route_score"] >= event["route_threshold"]) == (tier == "large")


async def test_a_named_model_bypasses_routing_even_with_no_classifier_running(
    nats_server: NatsServer, tiers: Path, tenants: Path
) -> None:
    async with routed_stack(nats_server.url, tiers, tenants, classifier=False) as client:
        named = await client.post("/v1/chat/completions", json=ask(HARD, model="smollm2-135m"))
        auto = await client.post("/v1/chat/completions", json=ask(EASY))
    assert named.status_code == auto.status_code == 200
    assert named.headers["x-skinflint-tier"] == "small"
    # With the classifier down, 'auto' costs its saving, not its answer: the default tier answers.
    assert auto.headers["x-skinflint-tier"] == "large"
    events = await usage_events(nats_server.url)
    bypassed = events[named.headers["x-request-id"]]
    assert (bypassed["route_policy"], bypassed["counterfactual_tier"]) == (None, "small")
    skipped = events[auto.headers["x-request-id"]]
    assert (skipped["route_policy"], skipped["tier"], skipped["counterfactual_tier"]) == (None, "large", "large")


async def test_rules_a_minimum_tier_and_a_tenant_that_routes_everything(
    nats_server: NatsServer, tiers: Path, tenants: Path
) -> None:
    async with routed_stack(nats_server.url, tiers, tenants) as client:
        pro = await client.post("/v1/chat/completions", json=ask(EASY),
                                headers={"Authorization": "Bearer sk-skinflint-pro"})
        forced = await client.post("/v1/chat/completions", json=ask(EASY), headers={"X-Skinflint-Min-Tier": "large"})
        unknown = await client.post("/v1/chat/completions", json=ask(EASY), headers={"X-Skinflint-Min-Tier": "gold"})
        routed_named = await client.post("/v1/chat/completions", json=ask(EASY, model="big-model"),
                                         headers={"Authorization": "Bearer sk-skinflint-all"})
    assert pro.headers["x-skinflint-tier"] == "large"
    assert forced.headers["x-skinflint-tier"] == "large"
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "X-Skinflint-Min-Tier"
    assert routed_named.headers["x-skinflint-tier"] == "small"
    events = await usage_events(nats_server.url)
    assert events[pro.headers["x-request-id"]]["route_policy"] == "rule:pro-plan"
    assert events[forced.headers["x-request-id"]]["route_policy"] == "min_tier"
    # A tenant that routes every request: the model it named is what the saving counts against.
    event = events[routed_named.headers["x-request-id"]]
    assert (event["tier"], event["counterfactual_tier"], event["route_policy"]) == ("small", "large", "learned")


async def test_a_shadow_candidate_is_recorded_and_never_acted_on(
    nats_server: NatsServer, tenants: Path, tmp_path: Path
) -> None:
    config = tiers_config()
    # A candidate that would send everything strong, on every routed request.
    config["routing"]["shadow"] = [{"name": "all-strong", "kind": "length", "threshold": 0.0, "share": 1.0}]
    tiers = tmp_path / "tiers-shadow.yaml"
    tiers.write_text(yaml.safe_dump(config))
    async with routed_stack(nats_server.url, tiers, tenants) as client:
        r = await client.post("/v1/chat/completions", json=ask(EASY))
    assert r.status_code == 200 and r.headers["x-skinflint-tier"] == "small"
    event = (await usage_events(nats_server.url))[r.headers["x-request-id"]]
    assert event["tier"] == "small"
    assert [(p["policy"], p["tier"], p["threshold"]) for p in event["route_shadow"]] == [("all-strong", "large", 0.0)]


async def test_a_tier_with_no_worker_falls_back_and_the_usage_says_so(
    nats_server: NatsServer, tiers: Path, tenants: Path
) -> None:
    async with routed_stack(nats_server.url, tiers, tenants, worker_tiers=("small",)) as client:
        r = await client.post("/v1/chat/completions", json=ask(HARD))
        named = await client.post("/v1/chat/completions", json=ask(EASY, model="big-model", stream=True))
    assert r.status_code == named.status_code == 200
    assert r.headers["x-skinflint-tier"] == named.headers["x-skinflint-tier"] == "small"
    events = await usage_events(nats_server.url)
    for response in (r, named):
        event = events[response.headers["x-request-id"]]
        assert (event["tier"], event["fallback_from"]) == ("small", "large")


async def test_a_provider_that_is_down_falls_back_at_once_and_after_its_breaker_opens(
    nats_server: NatsServer, tenants: Path, tmp_path: Path
) -> None:
    config = tiers_config()
    # Nothing listens on the provider's port: every call is refused.
    config["tiers"]["large"] = {"kind": "upstream", "model": "big-model", "fallback": "small", "upstream": {
        "base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "big", "retries": 0,
        "breaker": {"failures": 2, "open_s": 30}}}
    tiers = tmp_path / "tiers-down.yaml"
    tiers.write_text(yaml.safe_dump(config))
    async with routed_stack(nats_server.url, tiers, tenants) as client:
        answers = [await client.post("/v1/chat/completions", json=ask(EASY, model="big-model")) for _ in range(4)]
    assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
    assert {r.headers["x-skinflint-tier"] for r in answers} == {"small"}
    events = await usage_events(nats_server.url)
    for r in answers:
        event = events[r.headers["x-request-id"]]
        assert (event["tier"], event["fallback_from"]) == ("small", "large")


async def test_without_a_fallback_an_unavailable_tier_is_a_503(
    nats_server: NatsServer, tenants: Path, tmp_path: Path
) -> None:
    tiers = tmp_path / "tiers-no-fallback.yaml"
    tiers.write_text(yaml.safe_dump(tiers_config(fallback=False)))
    async with routed_stack(nats_server.url, tiers, tenants, worker_tiers=("small",)) as client:
        r = await client.post("/v1/chat/completions", json=ask(EASY, model="big-model"))
    assert r.status_code == 503, r.text


async def test_the_cascade_escalates_a_weak_answer_that_fails_its_check_and_charges_both(
    nats_server: NatsServer, tenants: Path, tmp_path: Path
) -> None:
    tiers = tmp_path / "tiers-cascade.yaml"
    tiers.write_text(yaml.safe_dump(tiers_config(cascade=True)))
    # The small tier's answers stop at 2 tokens of its own accord: cut short, they fail the check.
    async with routed_stack(nats_server.url, tiers, tenants, default_max_tokens=2) as client:
        body = {"model": "auto", "messages": [{"role": "user", "content": EASY}]}
        escalated = await client.post("/v1/chat/completions", json=body)
        limited = await client.post("/v1/chat/completions", json={**body, "max_tokens": 2})
        streamed = await client.post("/v1/chat/completions", json={**body, "stream": True})
    assert escalated.status_code == limited.status_code == streamed.status_code == 200
    assert (escalated.headers["x-skinflint-tier"], escalated.json()["model"]) == ("large", "big-model")
    # A limit the client asked for is not a failure, and a stream has reached the client already.
    assert limited.headers["x-skinflint-tier"] == streamed.headers["x-skinflint-tier"] == "small"
    stream = await usage_stream(nats_server.url)
    mine = [e for e in stream if e["request_id"] == escalated.headers["x-request-id"]]
    assert len(mine) == 1, mine  # one request, one charge: the weak attempt's tokens ride on it
    event = mine[0]
    assert (event["tier"], event["escalated_from"], event["route_policy"]) == ("large", "small", "learned")
    assert event["escalation_completion_tokens"] == 2 and event["escalation_prompt_tokens"] > 0
    others = {e["request_id"]: e for e in stream}
    assert others[limited.headers["x-request-id"]]["escalated_from"] is None


def attribute(span: Span, key: str) -> Any:
    for kv in span.attributes:
        if kv.key == key:
            value = kv.value
            return value.string_value or value.double_value or value.bool_value
    return None


async def test_the_decision_is_on_the_trace(
    nats_server: NatsServer, stack_factory: Callable[[], Stack], tiers: Path
) -> None:
    tap_port = free_port()
    async with OtelTapHttpProtobufReceiver(OtelTapHttpProtobufReceiverSettings(http_port=tap_port)) as tap:
        stack = stack_factory()
        stack.env.update(SF_NATS_URL=nats_server.url, SF_OTEL_EXPORTER="otlp", SF_TIERS_FILE=str(tiers),
                         SF_OTEL_ENDPOINT=f"http://127.0.0.1:{tap_port}/v1/traces", OTEL_BSP_SCHEDULE_DELAY="200",
                         SF_PIPELINE='["classifier", "infer"]', SF_OPTIONAL_STAGES='["classifier"]')
        for tier in ("small", "large"):
            stack.start_service(f"worker-{tier}", "tests.support.fake_worker",
                                {"SF_FAKE_SECONDS_PER_TOKEN": "0", "SF_TIER": tier})
        classifier = stack.start_service("classifier", "services.classifier")
        port = stack.start_ingress(free_port())
        stack.wait_ready(timeout_s=60, tiers=("small", "large"))
        assert classifier.health_port is not None
        stack.wait_http(classifier.health_port, "/readyz", timeout_s=120, what="the classifier")
        root_span = asyncio.create_task(tap.await_trace(
            lambda s: s.name == "POST /v1/chat/completions" and s.kind == Span.SPAN_KIND_SERVER, timeout=60))
        classify = asyncio.create_task(tap.await_trace(lambda s: s.name == "classify", timeout=60))
        await asyncio.sleep(0.1)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=30) as client:
            r = await client.post("/v1/chat/completions", json=ask(HARD))
        assert r.status_code == 200 and r.headers["x-skinflint-tier"] == "large"
        root, span = await root_span, await classify
    assert span.trace_id == root.trace_id
    assert attribute(span, "sf.route.tier") == "large"
    assert attribute(span, "sf.route.policy") == "learned"
    assert 0 < attribute(span, "sf.route.score") <= 1
    assert attribute(root, "sf.tier") == "large"
