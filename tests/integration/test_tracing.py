"""One request is one trace: ingress's span and the worker's span share the trace id."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from oteltap import OtelTapHttpProtobufReceiver, OtelTapHttpProtobufReceiverSettings

from services.stack import Stack, free_port
from tests.integration.conftest import AUTH, chat
from tests.support.natsd import NatsServer

pytestmark = pytest.mark.integration


def attribute(span: Span, key: str) -> str | None:
    for kv in span.attributes:
        if kv.key == key:
            return str(kv.value.string_value)
    return None


async def test_a_request_is_one_trace_across_services(
    nats_server: NatsServer, stack_factory: Callable[[], Stack]
) -> None:
    tap_port = free_port()
    async with OtelTapHttpProtobufReceiver(OtelTapHttpProtobufReceiverSettings(http_port=tap_port)) as tap:
        stack = stack_factory()
        stack.env.update(SF_NATS_URL=nats_server.url, SF_OTEL_EXPORTER="otlp",
                         SF_OTEL_ENDPOINT=f"http://127.0.0.1:{tap_port}/v1/traces",
                         OTEL_BSP_SCHEDULE_DELAY="200")
        stack.start_service("worker", "tests.support.fake_worker", {"SF_FAKE_SECONDS_PER_TOKEN": "0"})
        port = stack.start_ingress(free_port())
        stack.wait_ready(timeout_s=60)
        # The receiver only hands out spans that arrive after one starts waiting for them.
        root_span = asyncio.create_task(tap.await_trace(
            lambda s: s.name == "POST /v1/chat/completions" and s.kind == Span.SPAN_KIND_SERVER, timeout=30))
        worker_side = asyncio.create_task(tap.await_trace(
            lambda s: s.name == "sf.v1.infer.small.interactive process" and s.kind == Span.SPAN_KIND_CONSUMER,
            timeout=30))
        await asyncio.sleep(0.1)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=30) as client:
            r = await client.post("/v1/chat/completions", json=chat(max_tokens=2))
        assert r.status_code == 200
        root, worker_span = await root_span, await worker_side
    assert attribute(root, "sf.request_id") == r.headers["x-request-id"]
    assert attribute(root, "sf.tenant") == "demo"
    assert worker_span.trace_id == root.trace_id
