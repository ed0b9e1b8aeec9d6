"""Baseline routers to measure the learned policy against, with its ``score`` interface.

- :class:`RandomPolicy`: a score drawn uniformly from [0, 1] per query, fixed by the seed and the
  query's text (the same query always gets the same score, whatever the order of the calls). Its
  APGR is 0.5 on average: what routing without looking is worth.
- :class:`LengthPolicy`: the longer the conversation, the higher the score (``chars / (chars +
  scale)``): the rule of thumb "long requests are hard".

Plain logic, no model files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.classifier.features import Query


@dataclass
class RandomPolicy:
    seed: int = 0
    name: str = "random"
    default_threshold: float = 0.5

    def needs_embedding(self) -> bool:
        return False

    def score(self, q: Query) -> float:
        digest = hashlib.blake2b(f"{self.seed}\x00{q.text}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    def score_many(self, qs: Sequence[Query]) -> npt.NDArray[np.float64]:
        return np.array([self.score(q) for q in qs], dtype=np.float64)


@dataclass
class LengthPolicy:
    #: Characters at which the score is 0.5.
    scale: float = 500.0
    name: str = "length"
    default_threshold: float = 0.5

    def needs_embedding(self) -> bool:
        return False

    def score(self, q: Query) -> float:
        chars = max(q.conversation_chars, len(q.text))
        return chars / (chars + self.scale)

    def score_many(self, qs: Sequence[Query]) -> npt.NDArray[np.float64]:
        return np.array([self.score(q) for q in qs], dtype=np.float64)
