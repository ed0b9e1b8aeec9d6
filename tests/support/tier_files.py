"""Tiers files for tests that run workers of tiers of their own."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml


def tiers_file(tiers: dict[str, dict[str, Any]], directory: Path | None = None) -> str:
    """A tiers file with ``tiers`` (each as in ``infra/config/tiers.yaml``) and each tier's model
    name answered by it, written to a file; its path."""
    config = {"tiers": tiers, "models": {t["model"]: {"tier": name} for name, t in tiers.items()}}
    path = Path(directory or tempfile.mkdtemp(prefix="sf-tiers-")) / "tiers.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)
