"""Cache stage settings (environment, ``SF_`` prefix like every service)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.cache.embedding import DEFAULT_MODEL_DIR
from services.cache.verifier import DEFAULT_ARTIFACT, DEFAULT_TARGET
from services.shared.settings import ServiceSettings


class CacheSettings(ServiceSettings):
    health_port: int = Field(default=9103, ge=0, le=65535, description="Port of /healthz, /readyz, /metrics.")
    default_ttl_s: float = Field(
        default=24 * 3600.0, ge=1, description="How long an answer is kept when the request names no TTL."
    )
    max_ttl_s: float = Field(
        default=7 * 24 * 3600.0, ge=1,
        description="The longest any answer is kept (the exact store's max age; a request's TTL is capped).",
    )
    semantic: bool = Field(default=True, description="Look up reworded questions too (False: exact only).")
    qdrant_url: str | None = Field(
        default=None, description="A Qdrant server (http://host:6333); unset: Qdrant's local mode in qdrant_path.")
    qdrant_path: Path | None = Field(
        default=Path("var/qdrant"),
        description="Local mode's folder (one cache replica only: it is locked); null: in memory (lost at exit).")
    qdrant_collection: str = Field(default="sf_cache_questions", description="The semantic index's collection.")
    candidates: int = Field(
        default=4, ge=1, le=64, description="Nearest stored questions the verifier examines per lookup.")
    min_cosine: float = Field(
        default=0.6, ge=-1, le=1,
        description="Candidates less similar than this are not examined, however the verifier would decide: "
                    "on real traffic (bench/replay_sharegpt.py) the verifier's hits below 0.6 were mostly short, "
                    "vague prompts served another's answer, while the labelled pairs lose 5 of 480 true hits.",
    )
    cache_overlap: bool = Field(
        default=True,
        description="On an exact miss, hand an interactive task to the model at once and run the semantic "
                    "lookup meanwhile; the worker holds its answer until the verdict (SF_CACHE_VERDICT_TIMEOUT_S "
                    "on the worker), and drops it when the cache serves. False: decide first, then hand on.",
    )
    cache_target_false_hit_rate: float = Field(
        default=DEFAULT_TARGET, ge=0, lt=1,
        description="The verifier's calibration target; the artifact must be calibrated to it "
                    "(same variable as `skinflint cache score`).",
    )
    cache_verifier_file: Path = Field(
        default=DEFAULT_ARTIFACT, description="The verifier's artifact (built by `make install`; same "
        "variable as `skinflint cache score`: SF_CACHE_VERIFIER_FILE).",
    )
    embedder_dir: Path = Field(default=DEFAULT_MODEL_DIR, description="all-MiniLM-L6-v2 as ONNX (make install).")
    embed_threads: int = Field(default=1, ge=1, description="ONNX Runtime threads for one embedding.")
    sweep_interval_s: float = Field(
        default=300.0, gt=0, description="How often expired points are removed from the semantic index.")
