"""OpenTelemetry set-up: one tracer provider per process, exporting where settings say."""

from __future__ import annotations

import sys
from typing import IO

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from services.shared.settings import ServiceSettings


def setup_tracing(service_name: str, settings: ServiceSettings) -> TracerProvider:
    """Build the process's tracer provider and make it the global one.

    ``none`` still creates spans (so trace ids propagate across services and show in logs)
    but exports nothing.
    """
    resource = Resource.create(
        {"service.name": f"skinflint-{service_name}", "service.instance.id": settings.instance_id}
    )
    # Parent-based: a service downstream traces a request exactly when ingress decided to.
    sampler = ParentBased(TraceIdRatioBased(settings.otel_sample_ratio))
    provider = TracerProvider(resource=resource, sampler=sampler)
    if settings.otel_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otel_endpoint)))
    elif settings.otel_exporter == "console":
        out: IO[str] = sys.stdout
        if settings.otel_console_path:
            out = open(settings.otel_console_path, "a", buffering=1)  # noqa: SIM115 - lives with the process
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=out)))
    trace.set_tracer_provider(provider)
    return provider
