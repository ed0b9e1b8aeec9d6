"""Batch service settings (environment, ``SF_`` prefix like every service).

The tenants file, the pipeline and its optional stages are ingress's own settings (the same
environment variables): a batch item is routed and visits the stages exactly as a chat request."""

from __future__ import annotations

from pydantic import Field

from services.ingress.settings import IngressSettings
from services.shared.settings import ServiceSettings

_INGRESS = IngressSettings.model_fields


class BatchSettings(ServiceSettings):
    health_port: int = Field(default=9105, ge=0, le=65535, description="Port of /healthz, /readyz, /metrics.")
    tenants_file: str = Field(default=_INGRESS["tenants_file"].default, description="Tenants (routing, cache).")
    pipeline: list[str] = Field(
        default_factory=lambda: list(_INGRESS["pipeline"].get_default(call_default_factory=True)),
        description="Stages a batch item visits, as chat requests do (SF_PIPELINE).")
    optional_stages: list[str] = Field(
        default_factory=lambda: list(_INGRESS["optional_stages"].get_default(call_default_factory=True)),
        description="Stages an item goes on without when they are down (SF_OPTIONAL_STAGES).")
    batch_max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1, description="Largest input file.")
    batch_max_lines: int = Field(default=50_000, ge=1, description="Most requests in one batch.")
    batch_max_in_flight: int = Field(
        default=64, ge=1, le=10_000,
        description="Items handed to the stages and not yet answered, across all jobs of one replica: the "
                    "rest wait in the work stream, where a cancel still stops them. Keep it above the bulk "
                    "slots of all workers.")
    batch_redispatch_after_s: float = Field(
        default=900.0, gt=0, description="An item with no result this long after its hand-off is handed off "
        "again (a stage that died holding it); the bulk stream drops a copy still queued.")
    batch_output_expiry_s: int = Field(default=30 * 24 * 3600, ge=60, description="Output and error files expire "
                                       "after this long.")
    batch_max_window_hours: int = Field(default=168, ge=1, description="Longest completion_window accepted.")
    batch_sweep_interval_s: float = Field(default=2.0, gt=0, description="How often jobs are checked for expiry, "
                                          "finished cancels and unfinished finalizing, and files for expiry.")
    batch_start_retry_s: float = Field(default=30.0, gt=0, description="A job still validating this long after "
                                       "it was created is started by the sweeper (its start message was lost).")
