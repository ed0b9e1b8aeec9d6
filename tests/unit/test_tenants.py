"""API keys, tenants and limits."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.ingress.tenants import Gate, TenantsFile
from services.shared.errors import RateLimited, Unauthorized
from services.shared.settings import ConfigFileError, load_config_file

pytestmark = pytest.mark.unit


def gate(**tenant: object) -> Gate:
    base = {"name": "acme", "keys": [{"id": "k1", "key": "sk-acme-secret"}]}
    return Gate(TenantsFile.model_validate({"tenants": [{**base, **tenant}]}))


def test_bearer_key_maps_to_its_tenant() -> None:
    caller = gate().authenticate("Bearer sk-acme-secret")
    assert (caller.tenant, caller.key_id, caller.admin) == ("acme", "k1", False)


def test_hashed_keys_work_without_the_secret_in_config() -> None:
    digest = hashlib.sha256(b"sk-hashed-secret").hexdigest()
    g = gate(keys=[{"id": "prod", "sha256": digest}])
    assert g.authenticate("bearer sk-hashed-secret").key_id == "prod"


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer wrong-key"])
def test_bad_credentials_are_401(header: str | None) -> None:
    with pytest.raises(Unauthorized):
        gate().authenticate(header)


def test_rate_limit_gives_429_with_retry_after() -> None:
    g = gate(requests_per_minute=60, burst=2)
    caller = g.authenticate("Bearer sk-acme-secret")
    g.admit(caller)
    g.admit(caller)
    with pytest.raises(RateLimited) as info:
        g.admit(caller)
    assert info.value.retry_after > 0  # type: ignore[attr-defined]


def test_concurrency_limit_is_released() -> None:
    g = gate(max_concurrent=1)
    caller = g.authenticate("Bearer sk-acme-secret")
    g.admit(caller)
    with pytest.raises(RateLimited, match="in flight"):
        g.admit(caller)
    g.release(caller)
    g.admit(caller)


def test_config_errors_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  - name: acme\n    keys: [{id: k, key: sk-long-enough}]\n    rpm: 5\n")
    with pytest.raises(ConfigFileError, match=r"tenants\.yaml: tenants\.0\.rpm: Extra inputs"):
        load_config_file(path, TenantsFile)


def test_a_key_shared_by_two_tenants_is_refused() -> None:
    with pytest.raises(ValueError, match="also a key of"):
        TenantsFile.model_validate({"tenants": [
            {"name": "a", "keys": [{"id": "x", "key": "sk-same-secret"}]},
            {"name": "b", "keys": [{"id": "y", "key": "sk-same-secret"}]},
        ]})


def test_the_shipped_config_is_valid() -> None:
    config = load_config_file(Path(__file__).resolve().parents[2] / "infra/config/tenants.yaml", TenantsFile)
    assert any(t.admin for t in config.tenants)
