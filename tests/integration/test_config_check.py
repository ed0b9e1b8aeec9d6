"""A configuration mistake stops a service at start-up, in one line naming the file or variable
and the key, with exit code 78 (a supervisor does not restart it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.shared.runner import EX_CONFIG

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def start(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Nothing listens on this NATS URL: a service that got past its checks would hang, not exit 78.
    full = {**os.environ, "SF_NATS_URL": "nats://127.0.0.1:1", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-m", module], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize(("module", "env", "message"), [
    ("services.ingress", {"SF_PIPELINE": '["cahce", "infer"]', "SF_PORT": "0"},
     "SF_PIPELINE.0: 'cahce' is not a stage skinflint has"),
    ("services.ingress", {"SF_OPTIONAL_STAGES": '["infer"]', "SF_PORT": "0"},
     "SF_OPTIONAL_STAGES.0: 'infer' cannot be optional"),
    ("services.ingress", {"SF_TIERS_FILE": "tests/support/tiers-unpriced.yaml", "SF_PORT": "0"},
     "tests/support/tiers-unpriced.yaml: tiers.gold: tier 'gold' has no price in infra/config/pricebook.yaml"),
    ("services.classifier", {"SF_TIERS_FILE": "tests/support/tiers-unpriced.yaml"},
     "tiers.gold: tier 'gold' has no price"),
    ("services.cache", {"SF_TIERS_FILE": "infra/config/nope.yaml"}, "infra/config/nope.yaml: file not found"),
    ("services.worker", {"SF_TIER": "gold"}, "SF_TIER: tier 'gold' has no price in infra/config/pricebook.yaml"),
    ("services.worker", {"SF_MAX_NUM_SEQS": "0"}, "SF_MAX_NUM_SEQS: Input should be greater than or equal to 1"),
    ("services.accounting", {"SF_PRICEBOOK_FILE": "infra/config/nope.yaml"}, "infra/config/nope.yaml: file not found"),
])
def test_a_mistake_stops_the_service_with_a_message_naming_it(module: str, env: dict[str, str],
                                                               message: str) -> None:
    done = start(module, env)
    assert done.returncode == EX_CONFIG, done.stderr[-2000:]
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if "configuration error" in line]) == 1


def test_a_price_book_with_the_retired_reference_tier_stops_accounting(tmp_path: Path) -> None:
    # A fixed reference tier is gone (each request's counterfactual is its own): an old price book
    # must not start and silently mean something else.
    book = tmp_path / "pricebook.yaml"
    book.write_text("reference_tier: large\n" + (ROOT / "infra/config/pricebook.yaml").read_text())
    done = start("services.accounting", {"SF_PRICEBOOK_FILE": str(book)})
    assert done.returncode == EX_CONFIG, done.stderr[-2000:]
    assert f"{book}: reference_tier: no longer used" in done.stderr


def test_a_fallback_to_a_tier_that_does_not_exist_stops_ingress(tmp_path: Path) -> None:
    tiers = tmp_path / "tiers.yaml"
    tiers.write_text((ROOT / "infra/config/tiers.yaml").read_text().replace("fallback: small", "fallback: smal"))
    done = start("services.ingress", {"SF_TIERS_FILE": str(tiers), "SF_PORT": "0"})
    assert done.returncode == EX_CONFIG, done.stderr[-2000:]
    assert str(tiers) in done.stderr
    assert "tiers.large.fallback: 'smal' is not a tier (tiers: large, small)" in done.stderr
