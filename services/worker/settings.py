"""Worker settings (environment: ``SF_WORKER_...`` is not used; all share the ``SF_`` prefix)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, model_validator

from services.shared.settings import ServiceSettings

Dtype = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]


class WorkerSettings(ServiceSettings):
    model_path: str = Field(default=".models/SmolLM2-135M-Instruct", description="Model folder for vLLM.")
    model_name: str = Field(default="smollm2-135m", description="Public model name it answers as (default: the "
                                                                "tier's 'model' in the tiers file).")
    tier: str = Field(default="small", description="Tier whose subjects it serves; its kind (self-hosted or "
                                                    "upstream) and options come from the tiers file.")
    device: str | None = Field(
        default=None, description="Pin to this GPU (sets CUDA_VISIBLE_DEVICES before the engine loads)."
    )
    max_num_seqs: int = Field(default=32, ge=1, description="Sequences the engine runs at once (slots).")
    max_waiting: int = Field(
        default=32, ge=0,
        description="Interactive requests accepted beyond the slots; they wait in vLLM's priority queue.",
    )
    interactive_reserve: int = Field(
        default=4, ge=0, description="Slots bulk work never takes, so a chat burst starts at once."
    )
    bulk_slots_with_chat: int = Field(
        default=2, ge=0,
        description="Bulk tasks a worker keeps running while chat is active; more are handed back to the queue "
                    "when chat arrives (preempted: run again later, charged once). Set it to max_num_seqs to "
                    "let bulk keep every slot the reserve leaves.")
    chat_quiet_s: float = Field(default=5.0, ge=0, description="Chat counts as active this long after the last "
                                "interactive request arrived (bulk then gets every free slot again).")
    max_model_len: int = Field(default=2048, ge=64, description="Context length (prompt + answer).")
    default_max_tokens: int = Field(default=512, ge=1, description="Answer length when a request sets none.")
    kv_cache_gib: float = Field(default=2.0, gt=0, description="KV cache size (CPU build: RAM).")
    gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1.0, description="vLLM memory fraction.")
    enforce_eager: bool = Field(default=True, description="Skip graph compilation (faster start on CPU).")
    dtype: Dtype = Field(
        default="auto",
        description="Model dtype for vLLM; auto is float32 on a CPU without fast bfloat16 (no AVX-512).",
    )
    quantization: str | None = Field(
        default=None, description="vLLM quantization method (awq, gptq, fp8, ...); none: the weights as stored.")
    kv_cache_dtype: str = Field(default="auto", description="KV cache dtype for vLLM (auto, fp8, fp8_e4m3, fp8_e5m2).")
    health_port: int = Field(default=9101, ge=0, le=65535, description="Port of /healthz, /readyz, /metrics.")
    heartbeat_interval_s: float = Field(default=1.0, gt=0, description="Seconds between heartbeats.")
    bulk_enabled: bool = Field(default=True, description="Whether this worker takes bulk work.")
    bulk_ack_wait_s: float = Field(default=60.0, gt=1, description="Redeliver bulk work unacked this long.")
    usage_ack_timeout_s: float = Field(
        default=5.0, gt=0, le=60,
        description="A usage event (published ahead of its answer, unawaited) whose storage JetStream "
                    "has not acknowledged this long is published again (stored once, by message id).",
    )
    cache_verdict_timeout_s: float = Field(
        default=1.0, gt=0,
        description="A task the cache handed on before deciding: how long the answer may wait for the "
                    "cache's verdict before it goes out as a miss (the cache recorded as skipped).",
    )
    bulk_max_deliveries: int = Field(
        default=20, ge=1, description="Deliveries of a bulk task before JetStream stops offering it (a preempted "
        "task counts one; the batch service hands an item with no result on again later).")

    @model_validator(mode="after")
    def _reserve_fits(self) -> WorkerSettings:
        if self.interactive_reserve >= self.max_num_seqs:
            raise ValueError("interactive_reserve must be smaller than max_num_seqs, or bulk never runs")
        return self


def environment_value(name: str) -> str | None:
    """The environment variable ``name`` whose name a config file gives (an upstream tier's API
    key): read here, once at start-up, like every other setting. Empty counts as unset."""
    return os.environ.get(name) or None
