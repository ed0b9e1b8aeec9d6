"""Which tier a worker serves, and how: its entry in the tiers file applied to its settings.

Plain logic, run once at start-up; a mistake is a ``ConfigError`` naming the environment
variable or the file and key (the worker stops with exit code 78).

Precedence for a self-hosted tier's engine options: an ``SF_...`` environment variable set
explicitly wins over the file's ``engine:`` entry, which wins over the worker's defaults. The
public model name (the answers' ``model``) is the tier's ``model`` unless ``SF_MODEL_NAME`` is set.
An upstream tier's slots (the requests it forwards at once) are its ``max_inflight`` unless
``SF_MAX_NUM_SEQS`` is set; it loads no engine (vLLM is never imported).

An upstream tier's API key is read from the environment variable its ``api_key_env`` names.
That variable unset is a start-up error, except for a provider on this machine (a local
``vllm serve`` needs no key): then requests go without one, and a log line says so.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from services.shared.settings import ConfigError, env_name
from services.shared.tiers import TierConfig, load_tiers
from services.worker.settings import WorkerSettings, environment_value

log = logging.getLogger(__name__)

#: EngineOptions fields -> the WorkerSettings fields they set (the same names).
_ENGINE_FIELDS = ("model_path", "dtype", "quantization", "kv_cache_dtype", "max_num_seqs", "max_model_len",
                  "kv_cache_gib", "enforce_eager")


@dataclass(frozen=True)
class ServedTier:
    """The tier a worker serves: its config, the worker's settings with it applied, and for an
    upstream tier the provider's API key (None: send none)."""

    name: str
    config: TierConfig
    settings: WorkerSettings
    api_key: str | None = None


def resolve_tier(settings: WorkerSettings) -> ServedTier:
    tiers = load_tiers(settings.tiers_file)
    config = tiers.tiers.get(settings.tier)
    if config is None:
        raise ConfigError(f"{env_name('tier')}: tier {settings.tier!r} is not in {settings.tiers_file} "
                          f"(tiers: {', '.join(sorted(tiers.tiers))})")
    explicit = settings.model_fields_set
    updates: dict[str, Any] = {}
    if "model_name" not in explicit:
        updates["model_name"] = config.model
    api_key = None
    where = f"{settings.tiers_file}: tiers.{settings.tier}"
    if config.kind == "vllm":
        if config.engine is not None:
            options = config.engine.model_dump(exclude_none=True)
            updates.update({k: options[k] for k in _ENGINE_FIELDS if k in options and k not in explicit})
    else:
        assert config.upstream is not None  # TierConfig checks it
        if "max_num_seqs" not in explicit:
            updates["max_num_seqs"] = config.upstream.max_inflight
        api_key = _api_key(where, config.upstream.api_key_env, config.upstream.base_url)
    resolved = settings.model_copy(update=updates)
    if resolved.interactive_reserve >= resolved.max_num_seqs:
        if "interactive_reserve" in explicit:
            raise ConfigError(f"{env_name('interactive_reserve')}: {resolved.interactive_reserve} must be smaller "
                              f"than the tier's {resolved.max_num_seqs} slots ({where}), or bulk work never runs")
        resolved = resolved.model_copy(update={"interactive_reserve": resolved.max_num_seqs - 1})
    return ServedTier(settings.tier, config, resolved, api_key)


def _api_key(where: str, key_env: str | None, base_url: str) -> str | None:
    if key_env is None:
        return None
    key = environment_value(key_env)
    if key is None:
        if not is_local(base_url):
            raise ConfigError(f"{where}.upstream.api_key_env: the environment variable {key_env} is not set; "
                              f"export the provider's API key in it")
        log.info("%s is not set: calling the local provider at %s without an API key", key_env, base_url)
    return key


def is_local(url: str) -> bool:
    """Whether ``url``'s host is this machine (a loopback address or ``localhost``)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
