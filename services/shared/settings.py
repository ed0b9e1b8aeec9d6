"""Settings base. Every service reads its configuration once, here, and passes it down."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.shared.sched import DEFAULT_SLICE_US, MAX_SLICE_US, MIN_SLICE_US
from services.shared.validation import summary


def default_instance_id() -> str:
    """Unique per process, readable in logs: host, pid and a short random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class ServiceSettings(BaseSettings):
    """Settings every service has. Environment variables use the ``SF_`` prefix."""

    model_config = SettingsConfigDict(env_prefix="SF_", env_nested_delimiter="__", extra="forbid")

    nats_url: str = Field(default="nats://127.0.0.1:4222", description="NATS server(s), comma separated.")
    instance_id: str = Field(default_factory=default_instance_id, description="This replica's id.")
    log_level: str = Field(default="INFO", description="Python log level.")
    otel_exporter: Literal["none", "console", "otlp"] = Field(
        default="none", description="Where spans go: nowhere, a file/console, or an OTLP collector."
    )
    otel_endpoint: str = Field(
        default="http://127.0.0.1:4318/v1/traces", description="OTLP/HTTP traces endpoint."
    )
    otel_sample_ratio: float = Field(
        default=1.0, ge=0.0, le=1.0,
        description="Share of requests traced (decided once at ingress, followed by every service).",
    )
    otel_console_path: str | None = Field(
        default=None, description="With otel_exporter=console: a file for spans (stdout if unset)."
    )
    drain_timeout_s: float = Field(
        default=30.0, gt=0, description="On SIGTERM, how long in-flight work may take to finish."
    )
    sched_slice_us: int = Field(
        default=DEFAULT_SLICE_US,
        description="Linux 6.12+: the scheduler slice (µs, 100 to 100000) the service's threads ask "
                    "for, so that a message wakes them ahead of a busy engine process on the same "
                    "core (services.shared.sched). 0 keeps the kernel's default.",
    )

    pricebook_file: str = Field(
        default="infra/config/pricebook.yaml",
        description="Prices per tier. Accounting charges with it; every service checks at start-up that "
                    "the tiers it can answer with have a price.",
    )
    tiers_file: str = Field(
        default="infra/config/tiers.yaml",
        description="Model tiers (self-hosted or upstream), public model names and routing; every service "
                    "checks it at start-up (services/shared/tiers.py).",
    )
    health_host: str = Field(
        default="127.0.0.1", description="Address of /healthz, /readyz and /metrics (0.0.0.0 in a container).")
    health_port: int = Field(
        default=9100, ge=0, le=65535,
        description="Port of the service's /healthz, /readyz and /metrics (0: any free port, logged). "
                    "Ingress serves them on its HTTP port instead.",
    )

    sched_keep_off_engine_cpus: bool = Field(
        default=True,
        description="Keep the service's threads off the CPUs that the engine processes it started "
                    "are pinned to (vLLM's CPU build pins its compute; services.shared.sched).",
    )

    @field_validator("sched_slice_us")
    @classmethod
    def _slice_in_kernel_bounds(cls, value: int) -> int:
        if value != 0 and not MIN_SLICE_US <= value <= MAX_SLICE_US:
            raise ValueError(f"must be 0 (the kernel's default) or {MIN_SLICE_US}..{MAX_SLICE_US} µs")
        return value


class ConfigError(ValueError):
    """The deployment's configuration is wrong; the message names the file or environment
    variable and the bad key. A service that meets one stops at start-up (exit code 78)."""


class ConfigFileError(ConfigError):
    """A human-written config file is wrong; the message names the file and the bad key."""


def env_name(field: str) -> str:
    """The environment variable that sets a settings field (``pipeline`` -> ``SF_PIPELINE``)."""
    return f"SF_{field.upper()}"


S = TypeVar("S", bound=BaseSettings)


def load_settings(settings_class: type[S]) -> S:
    """Build a service's settings from the environment; a bad value is a ``ConfigError`` naming
    the environment variable (``SF_MAX_NUM_SEQS: Input should be greater than or equal to 1``)."""
    try:
        return settings_class()
    except ValidationError as exc:
        raise ConfigError(f"environment: {summary(exc, limit=10, rename=env_name)}") from exc


M = TypeVar("M", bound=BaseModel)


def load_config_file(path: str | Path, model: type[M]) -> M:
    """Load a YAML config file into ``model`` (which forbids unknown keys).

    Errors name the file and the dotted path of every bad key, so that a typo is found at
    start-up rather than at the first request.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigFileError(f"{path}: file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigFileError(f"{path}: {summary(exc, limit=20)}") from exc
