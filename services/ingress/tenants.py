"""API keys, tenants and their limits, from a config file validated at start-up."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contracts.v1 import CacheMode
from services.shared.errors import RateLimited, Unauthorized


class ApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, description="Non-secret name of the key, recorded with each charge.")
    key: str | None = Field(default=None, min_length=8, description="The secret itself (development).")
    sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="SHA-256 hex of the secret (production)."
    )

    @model_validator(mode="after")
    def _one_form(self) -> ApiKey:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give exactly one of 'key' or 'sha256'")
        return self

    @property
    def digest(self) -> str:
        return self.sha256 or hashlib.sha256((self.key or "").encode()).hexdigest()


class TenantCache(BaseModel):
    """A tenant's cache policy (``cache:`` in the tenants file)."""

    model_config = ConfigDict(extra="forbid")

    mode: CacheMode = Field(
        default=CacheMode.ON,
        description="on: serve hits; shadow: look up and record what would have been served, serve nothing; "
                    "off: neither look up nor store.",
    )
    store_sampled: bool = Field(
        default=False, description="Also cache answers sampled at temperature above 0 (each asker then gets "
                                   "the first sample).")
    ttl_s: float | None = Field(default=None, gt=0, description="How long answers are kept (default: the stage's).")


class TenantRouting(BaseModel):
    """A tenant's routing (``routing:`` in the tenants file)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    mode: Literal["auto", "all", "off"] = Field(
        default="auto",
        description="auto: requests for the 'auto' model are routed, a named model answers as named; all: every "
                    "request is routed (a named model is then what savings count against); off: 'auto' gets the "
                    "default tier, unrouted.",
    )
    tenant_class: str | None = Field(
        default=None, alias="class", pattern=r"^[A-Za-z0-9_.-]+$",
        description="The tenant's class (free, pro, ...), for routing rules (routing.rules[].tenant_class).")


class TenantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="Tenant id.")
    keys: list[ApiKey] = Field(min_length=1, description="API keys of this tenant.")
    requests_per_minute: int = Field(default=600, ge=1, description="Sustained request rate (429 above).")
    burst: int | None = Field(default=None, ge=1, description="Requests allowed at once (default: rpm/6).")
    max_concurrent: int = Field(default=64, ge=1, description="Requests in flight at once (429 above).")
    admin: bool = Field(default=False, description="May read every tenant's usage and purge every tenant's cache.")
    cache: TenantCache = Field(default_factory=TenantCache, description="The cache's policy for this tenant.")
    routing: TenantRouting = Field(default_factory=TenantRouting, description="How this tenant's requests are "
                                   "routed between tiers.")


class TenantsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenants: list[TenantConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> TenantsFile:
        seen: dict[str, str] = {}
        names = set()
        for tenant in self.tenants:
            if tenant.name in names:
                raise ValueError(f"tenant {tenant.name!r} is listed twice")
            names.add(tenant.name)
            for key in tenant.keys:
                if key.digest in seen:
                    raise ValueError(f"key {key.id!r} of {tenant.name!r} is also a key of {seen[key.digest]!r}")
                seen[key.digest] = tenant.name
        return self


@dataclass
class _Bucket:
    capacity: float
    rate_per_s: float
    tokens: float
    stamp: float = field(default_factory=time.monotonic)

    def take(self) -> float:
        """Take one token; returns 0 on success or the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate_per_s)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate_per_s


@dataclass(frozen=True)
class Caller:
    tenant: str
    key_id: str
    admin: bool
    cache: TenantCache = field(default_factory=TenantCache)
    routing: TenantRouting = field(default_factory=TenantRouting)


class Gate:
    """Authenticates API keys and enforces each tenant's rate and concurrency limits.

    Limits are per ingress replica: with N replicas behind a balancer a tenant gets up to N times
    its configured rate (documented; a shared limiter belongs to a later issue).
    """

    def __init__(self, config: TenantsFile) -> None:
        self._by_digest: dict[str, tuple[TenantConfig, ApiKey]] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._inflight: dict[str, int] = {}
        for tenant in config.tenants:
            burst = tenant.burst or max(1, tenant.requests_per_minute // 6)
            self._buckets[tenant.name] = _Bucket(burst, tenant.requests_per_minute / 60.0, burst)
            self._inflight[tenant.name] = 0
            for key in tenant.keys:
                self._by_digest[key.digest] = (tenant, key)
        self._tenants = {t.name: t for t in config.tenants}

    @property
    def tenant_names(self) -> frozenset[str]:
        return frozenset(self._tenants)

    def authenticate(self, authorization: str | None) -> Caller:
        if not authorization:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
        digest = hashlib.sha256(secret.strip().encode()).hexdigest()
        # Keys are looked up by their SHA-256, so the secret itself is never compared.
        found = self._by_digest.get(digest)
        if found is None:
            raise Unauthorized("invalid API key")
        tenant, key = found
        return Caller(tenant=tenant.name, key_id=key.id, admin=tenant.admin, cache=tenant.cache,
                      routing=tenant.routing)

    def admit(self, caller: Caller) -> None:
        """Count one request against the caller's limits; pair with ``release``."""
        tenant = self._tenants[caller.tenant]
        if self._inflight[caller.tenant] >= tenant.max_concurrent:
            raise RateLimited(
                f"tenant {caller.tenant!r} already has {tenant.max_concurrent} requests in flight; "
                "wait for one to finish", code="concurrency_limit_exceeded",
            )
        wait = self._buckets[caller.tenant].take()
        if wait > 0:
            err = RateLimited(
                f"tenant {caller.tenant!r} is over {tenant.requests_per_minute} requests per minute; "
                f"retry in {wait:.1f} s"
            )
            err.retry_after = wait  # type: ignore[attr-defined]
            raise err
        self._inflight[caller.tenant] += 1

    def release(self, caller: Caller) -> None:
        self._inflight[caller.tenant] -= 1
