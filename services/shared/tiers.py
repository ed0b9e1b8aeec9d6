"""Model tiers and routing: one validated config file (``infra/config/tiers.yaml``).

A *tier* is a pool of workers that answer alike at one price: self-hosted (``kind: vllm``, the
in-process engine) or bought (``kind: upstream``, a worker that forwards to an OpenAI-compatible
HTTP endpoint: a paid API or a remote ``vllm serve``). Public model names map to tiers; the
``routing`` section says how ``model: "auto"`` picks one (rules, then a learned policy with one
threshold, shadow candidates beside it).

Every service reads this file at start-up and stops on a mistake, naming the file and the key
(a fallback to a tier that does not exist, a cycle of fallbacks, an upstream tier without an
endpoint, an API key written into the file). Secrets never live here: an upstream tier names
the environment variable that holds its key. Plain logic: no bus code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.shared.settings import load_config_file

Dtype = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]
#: Environment variable names an upstream tier may take its API key from.
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineOptions(_Strict):
    """vLLM options of a self-hosted tier, passed through to the engine. Unset: the worker's own
    settings (``SF_...`` environment variables win over this file)."""

    model_path: str | None = Field(default=None, description="Model folder for vLLM.")
    dtype: Dtype | None = Field(default=None, description="Weights' dtype (auto: vLLM's choice; float32 on a "
                                                          "CPU without fast bfloat16).")
    quantization: str | None = Field(default=None, description="vLLM quantization method (awq, gptq, fp8, ...).")
    kv_cache_dtype: str | None = Field(default=None, description="KV cache dtype (auto, fp8, fp8_e4m3, fp8_e5m2).")
    max_num_seqs: int | None = Field(default=None, ge=1, description="Sequences the engine runs at once (slots).")
    max_model_len: int | None = Field(default=None, ge=64, description="Context length (prompt + answer).")
    kv_cache_gib: float | None = Field(default=None, gt=0, description="KV cache size in GiB (CPU build: RAM).")
    enforce_eager: bool | None = Field(default=None, description="Skip graph compilation (faster start).")


class Breaker(_Strict):
    """A circuit breaker: after ``failures`` failures in a row the provider is taken for down and
    every request is refused at once (503, or the fallback tier) for ``open_s``; then one probe
    request is let through, and its success closes the breaker again."""

    failures: int = Field(default=5, ge=1, description="Consecutive failures that open the breaker.")
    open_s: float = Field(default=10.0, gt=0, description="Seconds the breaker stays open before a probe.")


class UpstreamOptions(_Strict):
    """Where an upstream tier forwards requests, and how patiently."""

    base_url: str = Field(pattern=r"^https?://", description="OpenAI-compatible API root, e.g. "
                                                            "https://api.openai.com/v1.")
    model: str = Field(min_length=1, description="The model name the provider knows it by.")
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the provider's API key (never the key itself).")
    connect_timeout_s: float = Field(default=5.0, gt=0, description="Longest wait for a connection.")
    timeout_s: float = Field(default=60.0, gt=0, description="Longest wait for the provider's next bytes.")
    retries: int = Field(default=2, ge=0, le=10, description="Retries of a request that failed before any "
                                                             "output (connection errors, 429, 5xx).")
    backoff_s: float = Field(default=0.2, ge=0, description="First retry's delay; doubled each retry, jittered.")
    max_connections: int = Field(default=64, ge=1, description="Connections kept open to the provider.")
    max_inflight: int = Field(default=64, ge=1, description="Requests the worker forwards at once (its slots).")
    breaker: Breaker = Field(default_factory=Breaker, description="When to stop calling a provider that fails.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra non-secret headers for the provider.")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError("must name an environment variable (A-Z, 0-9, _), not hold the key itself")
        return value

    @field_validator("headers")
    @classmethod
    def _no_secret_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if name.lower() in ("authorization", "api-key", "x-api-key"):
                raise ValueError(f"{name}: keys come from the environment (api_key_env), not from this file")
        return value


class TierConfig(_Strict):
    kind: Literal["vllm", "upstream"] = Field(description="vllm: self-hosted workers; upstream: a provider.")
    model: str = Field(min_length=1, description="Public model name the tier answers as (the response's "
                                                 "'model').")
    description: str = Field(default="", description="Shown in GET /v1/models.")
    engine: EngineOptions | None = Field(default=None, description="kind vllm: engine options.")
    upstream: UpstreamOptions | None = Field(default=None, description="kind upstream: the provider.")
    fallback: str | None = Field(default=None, description="Tier to answer with while this one is unavailable.")

    @model_validator(mode="after")
    def _kind_matches(self) -> TierConfig:
        if self.kind == "upstream" and self.upstream is None:
            raise ValueError("an upstream tier needs 'upstream' (base_url and model)")
        if self.kind == "vllm" and self.upstream is not None:
            raise ValueError("'upstream' is only for kind upstream")
        if self.kind == "upstream" and self.engine is not None:
            raise ValueError("'engine' is only for kind vllm")
        return self


class ModelEntry(_Strict):
    tier: str = Field(description="Tier that answers this public model name.")
    description: str = Field(default="", description="Shown in GET /v1/models.")


class Rule(_Strict):
    """A routing rule: when every condition given holds, the request goes to ``tier``. Rules are
    tried in order before the policy; the first that matches decides."""

    name: str = Field(min_length=1, description="Shown in the decision (policy 'rule:<name>').")
    tier: str = Field(description="Tier to send a matching request to.")
    min_chars: int | None = Field(default=None, ge=0, description="The conversation has at least this many "
                                                                  "characters.")
    max_chars: int | None = Field(default=None, ge=0, description="... at most this many characters.")
    tenant_class: list[str] | None = Field(default=None, description="The tenant's class is one of these.")
    min_turns: int | None = Field(default=None, ge=1, description="At least this many messages.")

    @model_validator(mode="after")
    def _has_condition(self) -> Rule:
        if all(v is None for v in (self.min_chars, self.max_chars, self.tenant_class, self.min_turns)):
            raise ValueError("a rule needs at least one condition (min_chars, max_chars, tenant_class, min_turns)")
        return self


class PolicyConfig(_Strict):
    """The learned policy: a score in [0, 1] (how likely the request needs the strong tier)
    against ``threshold``: at or above it, the strong tier. Lower thresholds buy quality with
    cost."""

    kind: Literal["learned", "length"] = Field(default="learned", description="learned: the trained router "
                                               "(artifact); length: longer conversations go strong.")
    artifact: str = Field(default=".models/router.json", description="kind learned: the trained policy "
                                                                     "(`skinflint router train`).")
    threshold: float | None = Field(default=None, ge=0, le=1, description="Strong at or above this score "
                                    "(default: the artifact's, calibrated at training).")


class ShadowPolicy(PolicyConfig):
    """A candidate policy run beside the live one on a share of traffic: its pick is recorded
    (usage event, trace, metrics), never acted on."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="Metric label of the candidate.")
    share: float = Field(default=1.0, gt=0, le=1, description="Share of routed requests it runs on.")


class CascadeConfig(_Strict):
    """Try the weak tier first and escalate to the strong one when a cheap check of its answer
    fails; the weak attempt's tokens are charged as the cascade's extra cost."""

    enabled: bool = Field(default=False, description="Off: the policy's pick answers.")
    min_chars: int = Field(default=1, ge=0, description="An answer shorter than this escalates.")
    escalate_on_length: bool = Field(default=True, description="An answer cut short by max_tokens escalates.")


class RoutingConfig(_Strict):
    auto_model: str = Field(default="auto", description="The model name that asks skinflint to route.")
    weak: str = Field(description="The cheap tier.")
    strong: str = Field(description="The strong tier.")
    default_tier: str = Field(description="Tier an 'auto' request uses without routing (classifier off or "
                                          "down): its counterfactual, against which routing's savings count.")
    rules: list[Rule] = Field(default_factory=list, description="Tried in order before the policy.")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="Decides what no rule did.")
    shadow: list[ShadowPolicy] = Field(default_factory=list, description="Candidates recorded, not acted on.")
    cascade: CascadeConfig = Field(default_factory=CascadeConfig, description="Weak first, escalate on failure.")


class TiersFile(_Strict):
    """The whole file. Checked as a whole: every tier named anywhere exists."""

    tiers: dict[str, TierConfig] = Field(min_length=1, description="Tiers by name.")
    models: dict[str, ModelEntry] = Field(min_length=1, description="Public model names clients may ask for.")
    routing: RoutingConfig | None = Field(default=None, description="How 'auto' picks a tier (none: no 'auto').")

    @field_validator("tiers")
    @classmethod
    def _tier_names(cls, value: dict[str, TierConfig]) -> dict[str, TierConfig]:
        for name in value:
            if not re.fullmatch(r"[a-z0-9_-]+", name):
                raise ValueError(f"tier name {name!r}: use a-z, 0-9, '_' and '-' (it is part of NATS subjects)")
        return value

    @model_validator(mode="after")
    def _references(self) -> TiersFile:
        known = ", ".join(sorted(self.tiers))

        def check(where: str, tier: str | None) -> None:
            if tier is not None and tier not in self.tiers:
                raise ValueError(f"{where}: {tier!r} is not a tier (tiers: {known})")

        for name, tier in self.tiers.items():
            check(f"tiers.{name}.fallback", tier.fallback)
        for name, model in self.models.items():
            check(f"models.{name}.tier", model.tier)
        for name in self.tiers:
            self._no_fallback_cycle(name)
        if self.routing is not None:
            r = self.routing
            for field in ("weak", "strong", "default_tier"):
                check(f"routing.{field}", getattr(r, field))
            for i, rule in enumerate(r.rules):
                check(f"routing.rules.{i}.tier", rule.tier)
            if r.auto_model in self.models:
                raise ValueError(f"routing.auto_model: {r.auto_model!r} is also a model in 'models'; "
                                 "a name either routes or names a tier")
            if r.weak == r.strong:
                raise ValueError("routing: weak and strong are the same tier")
        return self

    def _no_fallback_cycle(self, start: str) -> None:
        seen = [start]
        nxt = self.tiers[start].fallback
        while nxt is not None:
            if nxt in seen:
                raise ValueError(f"tiers.{start}.fallback: the fallbacks go round in a circle "
                                 f"({' -> '.join([*seen, nxt])})")
            seen.append(nxt)
            nxt = self.tiers[nxt].fallback

    # --- queries --------------------------------------------------------------------------
    def tier_of(self, model: str) -> str | None:
        entry = self.models.get(model)
        return entry.tier if entry is not None else None

    def fallbacks(self) -> dict[str, str]:
        """Tier -> the tier to try while it is unavailable."""
        return {name: t.fallback for name, t in self.tiers.items() if t.fallback is not None}

    def public_models(self) -> dict[str, str]:
        """Every model name a client may ask for -> its description (``auto`` included)."""
        names = {name: m.description or self.tiers[m.tier].description for name, m in self.models.items()}
        if self.routing is not None:
            names[self.routing.auto_model] = (f"routed: {self.routing.weak} or {self.routing.strong}, "
                                              "whichever answers it well for less")
        return names


def load_tiers(path: str | Path) -> TiersFile:
    """The tiers file, validated (``ConfigFileError`` naming the file and the key)."""
    return load_config_file(path, TiersFile)
