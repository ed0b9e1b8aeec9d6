"""Ingress settings."""

from __future__ import annotations

from pydantic import Field

from services.shared.settings import ServiceSettings


class IngressSettings(ServiceSettings):
    host: str = Field(default="127.0.0.1", description="HTTP bind address.")
    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port (0: any free port).")
    tenants_file: str = Field(default="infra/config/tenants.yaml", description="API keys and limits.")
    pipeline: list[str] = Field(
        default_factory=lambda: ["cache", "classifier", "infer"],
        description="Stages every request visits, in order; switch a stage off by leaving it out (the "
                    "classifier is visited only by routed requests: model 'auto', or a tenant that routes all).",
    )
    optional_stages: list[str] = Field(
        default_factory=lambda: ["cache", "classifier"],
        description="Stages a request goes on without when no replica takes it at once or it fails there "
                    "(a lever that is down costs savings, never answers). Inference never is.",
    )
    optional_hop_timeout_s: float = Field(
        default=0.5, gt=0, description="Longest an optional stage may take to accept before it is skipped.")
    request_timeout_s: float = Field(default=120.0, gt=0, description="Longest a client waits (504).")
    exact_cache_at_ingress: bool = Field(
        default=True,
        description="Answer exact cache hits here (one key-value read) instead of handing them to the cache "
                    "stage; misses go on to the stage, which then skips its own exact read.",
    )
    hop_timeout_s: float = Field(default=5.0, gt=0, description="Longest a stage may take to accept.")
    worker_liveness_s: float = Field(
        default=3.5, gt=0, description="A worker silent this long is taken for dead (503 to its clients)."
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest request body (413).")
    max_ws_inflight: int = Field(default=16, ge=1, description="Concurrent requests on one WebSocket.")
    batch_max_file_bytes: int = Field(
        default=209_715_200, ge=1, description="Largest batch input file POST /v1/files takes (413 file_too_large).")
    batch_max_window_hours: int = Field(
        default=168, ge=1, le=8760,
        description="Longest completion_window POST /v1/batches accepts, in hours ('24h' is OpenAI's only one).")
