"""Classifier stage settings (environment, ``SF_`` prefix like every service). What it routes
between, and by which policy, is in the tiers file (``SF_TIERS_FILE``: ``routing``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.cache.embedding import DEFAULT_MODEL_DIR
from services.shared.settings import ServiceSettings


class ClassifierSettings(ServiceSettings):
    health_port: int = Field(default=9104, ge=0, le=65535, description="Port of /healthz, /readyz, /metrics.")
    embedder_dir: Path = Field(
        default=DEFAULT_MODEL_DIR, description="all-MiniLM-L6-v2 as ONNX (make install): embeds a question no "
        "earlier stage embedded, when the policy uses the embedding.")
    embed_threads: int = Field(default=1, ge=1, description="ONNX Runtime threads for one embedding.")
