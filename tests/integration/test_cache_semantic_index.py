"""The semantic index on Qdrant's local mode: partitions kept apart, persisted, purged, expired."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.cache.semantic import SemanticIndex

pytestmark = pytest.mark.integration
DIM = 8


def unit(*values: float) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_local_mode_searches_one_partition_persists_and_forgets(tmp_path: Path) -> None:
    clock = Clock()
    index = await SemanticIndex.open(url=None, path=tmp_path, collection="q", dim=DIM, clock=clock)
    await index.put("demo", "p1", "k1", unit(1, 0), question="capital of France", created_at=990, expires_at=2000,
                    tags=("kb:v1",))
    await index.put("demo", "p1", "k2", unit(1, 1), question="capital of Spain", created_at=999, expires_at=1500)
    await index.put("demo", "p2", "k3", unit(1, 0), question="other partition", created_at=999, expires_at=2000)
    await index.put("acme", "p1", "k4", unit(1, 0), question="other tenant", created_at=999, expires_at=2000)
    await index.put("demo", "p1", "k1", unit(1, 0), question="capital of France", created_at=995, expires_at=2000,
                    tags=("kb:v1",))  # stored again: replaced, not added
    found = await index.search("demo", "p1", unit(1, 0), limit=5)
    assert [c.key for c in found] == ["k1", "k2"] and found[0].cosine == pytest.approx(1.0)
    assert [c.key for c in await index.search("demo", "p1", unit(1, 0), limit=5, max_age_s=2)] == ["k2"]
    assert index.may_hold("demo", "p1") and not index.may_hold("demo", "p9")
    await index.close()

    reopened = await SemanticIndex.open(url=None, path=tmp_path, collection="q", dim=DIM, clock=clock)
    assert [c.key for c in await reopened.search("demo", "p1", unit(1, 0), limit=5)] == ["k1", "k2"]
    clock.now = 1600  # k2 has expired: never found, then swept
    assert [c.key for c in await reopened.search("demo", "p1", unit(1, 0), limit=5)] == ["k1"]
    assert await reopened.sweep_expired() == 1
    assert await reopened.invalidate(tenant="demo", tag="kb:v1") == 1
    assert await reopened.search("demo", "p1", unit(1, 0), limit=5) == []
    assert [c.key for c in await reopened.search("acme", "p1", unit(1, 0), limit=5)] == ["k4"]
    assert await reopened.invalidate(tenant="acme") == 1
    assert await reopened.count() == 1  # demo's other partition
    await reopened.close()
