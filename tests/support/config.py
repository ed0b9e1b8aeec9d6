"""Config files for tests that run services with tiers of their own."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
#: Tiers for tests (tests/support/tiers.yaml): small, and large as the model "ghost".
TEST_TIERS = str(Path(__file__).resolve().parent / "tiers.yaml")


def pricebook_with(*tiers: str, directory: Path | None = None) -> str:
    """The real price book plus ``tiers`` (priced like ``small``), written to a file; its path."""
    book = yaml.safe_load((ROOT / "infra/config/pricebook.yaml").read_text())
    for tier in tiers:
        book["tiers"][tier] = dict(book["tiers"]["small"])
    path = Path(directory or tempfile.mkdtemp(prefix="sf-pricebook-")) / "pricebook.yaml"
    path.write_text(yaml.safe_dump(book))
    return str(path)
