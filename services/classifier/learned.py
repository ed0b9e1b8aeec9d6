"""The learned routing policy: how likely a request needs the strong tier, from cheap features.

Contract. :meth:`LearnedPolicy.score` maps a :class:`~services.classifier.features.Query` to a
number in [0, 1], RouteLLM's "the strong tier wins" view: the expected quality the strong tier
adds over the weak one (see ``services/classifier/dataset.py`` for what the labels stand for).
The caller routes ``score >= threshold`` to the strong tier; ``default_threshold`` is the one
that reached 95% of the strong tier's quality on the training data (out of fold) weighted to the
traffic mix (``mix.py``: production-like shares of chat, knowledge, maths, code and science, what
the service will route; see ``training.py``), and raising it trades quality for cost. One
decision is pure Python over the text (tens of microseconds) and two dot products; it needs the
query's embedding (:meth:`needs_embedding`); without one it falls back to a model of the text
features alone (worse: the evaluation reports both).

The model: logistic regression with L2 on standardised features (text features then the 384-d
embedding), fitted on soft labels. (A small MLP could not clearly help: on the shipped data set
this model's held-out APGR is within ~0.02 of the ceiling an oracle reaches, on either mix.)
Everything the decision needs is one JSON artifact, ``.models/router.json``, built by ``python -m
services.classifier.learned train`` (``make install``) and refused at load when its version or
feature names differ from this code's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.classifier.features import EMBEDDING_DIM, TEXT_FEATURES, Query, text_features

ARTIFACT_VERSION = 1
DEFAULT_ARTIFACT: Path = Path(__file__).resolve().parents[2] / ".models" / "router.json"
TRAIN_COMMAND = ("python -m services.classifier.learned train --data .models/router-data --out .models/router.json "
                 "(run by `make install`)")
Matrix = npt.NDArray[np.float64]
Vector = npt.NDArray[np.float64]


class ArtifactError(RuntimeError):
    """The router's artifact is missing, unreadable or does not fit this code."""


@dataclass(frozen=True)
class LinearModel:
    """``p = sigmoid(bias + weights · (x - mean) / scale)``, where ``x`` is the text features,
    then the embedding when ``len(weights)`` says so."""

    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float

    def __post_init__(self) -> None:
        if not len(self.mean) == len(self.scale) == len(self.weights):
            raise ValueError("mean, scale and weights need one value per feature")
        # Folded once: a decision is then a dot product and an add.
        w = np.asarray(self.weights) / np.asarray(self.scale)
        object.__setattr__(self, "_w", w)
        object.__setattr__(self, "_b", float(self.bias - w @ np.asarray(self.mean)))

    @property
    def width(self) -> int:
        return len(self.weights)

    def logits(self, x: Matrix) -> Vector:
        return np.asarray(x @ self._w + self._b, dtype=np.float64)  # type: ignore[attr-defined]

    def logit(self, text: Sequence[float], embedding: npt.NDArray[np.float32] | None) -> float:
        w: Vector = self._w  # type: ignore[attr-defined]
        n = len(text)
        z = self._b + float(np.dot(w[:n], text))  # type: ignore[attr-defined]
        if embedding is not None:
            z += float(np.dot(w[n:], embedding))
        return z


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


@dataclass
class LearnedPolicy:
    """A fitted model with its text-only fallback, threshold and provenance."""

    model: LinearModel
    fallback: LinearModel
    default_threshold: float
    trained_on: dict[str, Any] = field(default_factory=dict)
    name: str = "learned"

    def needs_embedding(self) -> bool:
        return self.model.width == len(TEXT_FEATURES) + EMBEDDING_DIM

    def score(self, q: Query) -> float:
        """Probability-like score in [0, 1] that ``q`` needs the strong tier."""
        x = text_features(q)
        if q.embedding is not None and self.needs_embedding():
            if q.embedding.shape != (EMBEDDING_DIM,):
                raise ValueError(f"the query embedding must be {EMBEDDING_DIM}-d, got shape {q.embedding.shape}")
            return sigmoid(self.model.logit(x, q.embedding))
        return sigmoid(self.fallback.logit(x, None))

    def score_many(self, qs: Sequence[Query]) -> npt.NDArray[np.float64]:
        """:meth:`score` of each query, in order (the same numbers, vectorised)."""
        if not qs:
            return np.zeros(0)
        text = np.array([text_features(q) for q in qs], dtype=np.float64)
        out = 1.0 / (1.0 + np.exp(-np.clip(self.fallback.logits(text), -30, 30)))
        with_embedding = [i for i, q in enumerate(qs) if q.embedding is not None]
        if with_embedding and self.needs_embedding():
            emb = np.stack([qs[i].embedding for i in with_embedding]).astype(np.float64)  # type: ignore[misc]
            z = self.model.logits(np.hstack([text[with_embedding], emb]))
            out[with_embedding] = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
        return out

    # -- the artifact ------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": ARTIFACT_VERSION, "kind": "logistic", "text_features": list(TEXT_FEATURES),
            "embedding": {"model": "all-MiniLM-L6-v2 (int8, services.cache.embedding)", "dim": EMBEDDING_DIM},
            "default_threshold": self.default_threshold, "model": asdict(self.model),
            "fallback": asdict(self.fallback), "trained_on": self.trained_on,
        }

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        tmp.rename(path)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_ARTIFACT) -> LearnedPolicy:
        """The artifact at ``path``; raises :class:`ArtifactError` naming the file, what is wrong
        and the command that builds it."""
        path = Path(path)
        rebuild = f"build it with `{TRAIN_COMMAND}`"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ArtifactError(f"{path} is missing: {rebuild}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArtifactError(f"{path} is unreadable ({e}): {rebuild}") from None
        try:
            if raw["version"] != ARTIFACT_VERSION:
                raise ArtifactError(f"{path}: version {raw['version']}, this code reads {ARTIFACT_VERSION}: {rebuild}")
            if tuple(raw["text_features"]) != TEXT_FEATURES:
                raise ArtifactError(f"{path}: text_features differ from services/classifier/features.py: {rebuild}")
            model, fallback = LinearModel(**raw["model"]), LinearModel(**raw["fallback"])
            widths = {len(TEXT_FEATURES), len(TEXT_FEATURES) + EMBEDDING_DIM}
            if model.width not in widths or fallback.width != len(TEXT_FEATURES):
                raise ArtifactError(f"{path}: model or fallback has the wrong number of weights: {rebuild}")
            threshold = float(raw["default_threshold"])
            if not 0.0 <= threshold <= 1.0:
                raise ArtifactError(f"{path}: default_threshold {threshold} is not in [0, 1]: {rebuild}")
            return cls(model=model, fallback=fallback, default_threshold=threshold,
                       trained_on=dict(raw.get("trained_on", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{path}: missing or malformed {e}: {rebuild}") from None


def train_main(argv: Sequence[str] | None = None) -> int:
    """Train and write the artifact; ``argv`` are the options after ``train`` (``--data PATH...``,
    ``--out``, ``--embedder``, ``--target``, ``--folds``; ``--help`` lists them). Returns the exit code."""
    from services.classifier.training import main

    return main(argv)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["train"]:
        sys.exit("usage: python -m services.classifier.learned train [--data PATH ...] [--out FILE] (--help)")
    sys.exit(train_main(sys.argv[2:]))
