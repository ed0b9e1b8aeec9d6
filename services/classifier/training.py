"""Training the learned router: ``python -m services.classifier.learned train`` (see ``learned.py``).

Only the rows of the ``train`` split are used. The L2 strength is chosen by grouped k-fold
cross-validation on them (near copies share a fold) on the out-of-fold APGR, every row counted
once; the final model is fitted on every training row. The text-only fallback is chosen the same
way on the text features alone.

The default threshold is the highest whose out-of-fold routing reaches ``--target`` (95%) of the
strong tier's quality *on the traffic mix* (``mix.py``): the training rows weighted so that
kinds of prompt have production-like shares, because that is what the service will route and
the threshold is what sets its cost. On the rows as built (about half hard benchmark items) the
same threshold gives a little less than the target, and the artifact records what it gives on
both mixes (``trained_on.oof_at_threshold``). A deployment's own rows (sources the mix does not
know) are its traffic already: the threshold is then calibrated on them as they come
(``trained_on.threshold_mix``: ``"rows as given"``).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.cache.embedding import DEFAULT_MODEL_DIR
from services.classifier import metrics
from services.classifier.dataset import DEFAULT_DATA, Row, read_many
from services.classifier.embeddings import CACHE_NAME, embed_prompts
from services.classifier.features import Query, text_features
from services.classifier.learned import DEFAULT_ARTIFACT, LearnedPolicy, LinearModel
from services.classifier.mix import BENCHMARK, TRAFFIC, MixError

DEFAULT_FOLDS = 5
L2_GRID = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
QUALITY_TARGET = 0.95
L2_TOLERANCE = 0.002
Matrix = npt.NDArray[np.float64]
Vector = npt.NDArray[np.float64]


def fit_logistic(x: Matrix, y: Vector, l2: float, *, iterations: int = 40) -> LinearModel:
    """L2-regularised logistic regression on soft targets ``y`` in [0, 1] (cross-entropy), by
    Newton's method on standardised features; the bias is not penalised."""
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"fit_logistic: x {x.shape} and y {y.shape} do not match")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0  # a constant feature stays at 0 after centring
    z = np.hstack([np.ones((len(x), 1)), (x - mean) / scale])
    penalty = np.full(z.shape[1], l2)
    penalty[0] = 0.0
    w = np.zeros(z.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -30, 30)))
        gradient = z.T @ (p - y) + penalty * w
        hessian = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.max(np.abs(step)) < 1e-6:
            break
    return LinearModel(mean.tolist(), scale.tolist(), w[1:].tolist(), float(w[0]))


def probabilities(model: LinearModel, x: Matrix) -> Vector:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(model.logits(x), -30, 30))), dtype=np.float64)


def folds(keys: Sequence[str], k: int) -> npt.NDArray[np.int64]:
    """A fold per row from a hash of its group: near copies share a fold; deterministic."""
    return np.array([int(hashlib.sha256(f"router-fold:{g}".encode()).hexdigest()[:8], 16) % k for g in keys])


@dataclass(frozen=True)
class Featurised:
    text: Matrix  # (n, len(TEXT_FEATURES))
    embedding: Matrix  # (n, 384)
    weak: Vector
    strong: Vector
    keys: list[str]

    @property
    def y(self) -> Vector:
        return np.clip(self.strong - self.weak, 0.0, 1.0)

    @property
    def full(self) -> Matrix:
        return np.hstack([self.text, self.embedding])


def featurise(rows: Sequence[Row], *, embedder_dir: Path = DEFAULT_MODEL_DIR, cache: Path | None = None,
              progress: bool = False) -> Featurised:
    """Features of each row as the service computes them for a one-message request."""
    emb = embed_prompts([r.prompt for r in rows], embedder_dir=embedder_dir, cache=cache, progress=progress)
    text = np.array([text_features(Query.single(r.prompt)) for r in rows], dtype=np.float64)
    return Featurised(text, emb.astype(np.float64), np.array([r.weak for r in rows]),
                      np.array([r.strong for r in rows]), [r.fold_key for r in rows])


def out_of_fold(x: Matrix, y: Vector, fold: npt.NDArray[np.int64], l2: float) -> Vector:
    """Each row's probability from a model fitted on the other folds."""
    out = np.empty(len(x))
    for f in np.unique(fold):
        held = fold == f
        out[held] = probabilities(fit_logistic(x[~held], y[~held], l2), x[held])
    return out


def choose(x: Matrix, data: Featurised, fold: npt.NDArray[np.int64], grid: Sequence[float]
           ) -> tuple[float, Vector, dict[float, float]]:
    """The L2 strength chosen on out-of-fold APGR (the strongest within ``L2_TOLERANCE`` of the
    best), its out-of-fold scores, and every strength's APGR."""
    results, oofs = {}, {}
    for l2 in grid:
        oofs[l2] = out_of_fold(x, data.y, fold, l2)
        results[l2] = metrics.apgr(metrics.curve(oofs[l2], data.weak, data.strong))
    # The strongest penalty within a hair of the best: APGRs closer than that are noise, and
    # picking among them by the fourth decimal would make the artifact change from run to run.
    best = max(results.values())
    l2 = max(a for a in grid if results[a] >= best - L2_TOLERANCE)
    return l2, oofs[l2], results


def calibration_mix(rows: Sequence[Row]) -> tuple[str, Vector]:
    """The mix the default threshold is calibrated on and its weights: the traffic mix, or the rows
    as given when the mix does not know their sources (see the module docstring)."""
    try:
        return TRAFFIC.name, TRAFFIC.weights(rows)
    except MixError:
        return "rows as given", BENCHMARK.weights(rows)


def at_threshold_by_mix(rows: Sequence[Row], oof: Vector, data: Featurised, threshold: float
                        ) -> dict[str, dict[str, float]]:
    """Out of fold: the strong-call share and the share of the strong tier's quality that
    ``threshold`` gives on each mix that applies to ``rows``."""
    out = {}
    for m in (TRAFFIC, BENCHMARK):
        try:
            w = m.weights(rows)
        except MixError:
            continue
        share, quality = metrics.at_threshold(oof, data.weak, data.strong, threshold, w)
        out[m.name] = {"strong_share": round(share, 4),
                       "of_strong_quality": round(quality / float(w @ data.strong / w.sum()), 4)}
    return out


def train(rows: Sequence[Row], *, embedder_dir: Path = DEFAULT_MODEL_DIR, cache: Path | None = None,
          k: int = DEFAULT_FOLDS, target: float = QUALITY_TARGET, grid: Sequence[float] = L2_GRID,
          data_hash: str = "", progress: bool = False) -> LearnedPolicy:
    """A policy from the ``train`` rows of ``rows`` (see the module docstring)."""
    train_rows = [r for r in rows if r.split == "train"]
    if len(train_rows) < 2 * k:
        raise SystemExit(f"only {len(train_rows)} training rows: need at least {2 * k}")
    started = time.monotonic()
    data = featurise(train_rows, embedder_dir=embedder_dir, cache=cache, progress=progress)
    if np.ptp(data.y) == 0:
        raise SystemExit("every training row has the same label: nothing to learn")
    fold = folds(data.keys, k)
    l2, oof, by_l2 = choose(data.full, data, fold, grid)
    l2_text, oof_text, by_l2_text = choose(data.text, data, fold, grid)
    mix_name, w = calibration_mix(train_rows)
    chosen = metrics.threshold_for_quality(metrics.curve(oof, data.weak, data.strong, w), target)
    threshold = min(1.0, max(0.0, chosen.threshold))
    fallback_at = metrics.threshold_for_quality(metrics.curve(oof_text, data.weak, data.strong, w), target)
    trained_on: dict[str, Any] = {
        "sha256": data_hash, "rows": len(train_rows), "sources": dict(sorted(Counter(r.source for r in train_rows)
                                                                              .items())),
        "folds": k, "l2": l2, "l2_text_only": l2_text, "quality_target": target,
        "oof_apgr_by_l2": {str(a): round(b, 4) for a, b in by_l2.items()},
        "oof_apgr_text_only_by_l2": {str(a): round(b, 4) for a, b in by_l2_text.items()},
        "threshold_mix": mix_name, "oof_strong_share_at_threshold": chosen.share,
        "oof_quality_at_threshold": chosen.quality,
        "oof_at_threshold": at_threshold_by_mix(train_rows, oof, data, threshold),
        "fallback_threshold": fallback_at.threshold,
    }
    policy = LearnedPolicy(model=fit_logistic(data.full, data.y, l2), fallback=fit_logistic(data.text, data.y, l2_text),
                           default_threshold=threshold, trained_on=trained_on)
    trained_on["seconds"] = round(time.monotonic() - started, 1)
    return policy


def embedding_cache(paths: Sequence[Path]) -> Path | None:
    """Where vectors of the data's prompts are kept: beside the first data folder or file (not
    inside: a rebuilt data folder keeps them)."""
    first = paths[0]
    return first.with_name(first.name + "." + CACHE_NAME)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.classifier.learned train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", default=[DEFAULT_DATA],
                        help="data folders (services.classifier.dataset build) or JSONL files of your own")
    parser.add_argument("--out", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--embedder", type=Path, default=DEFAULT_MODEL_DIR, help="all-MiniLM-L6-v2 ONNX folder")
    parser.add_argument("--target", type=float, default=QUALITY_TARGET,
                        help="the default threshold reaches this share of the strong tier's quality (out of fold)")
    parser.add_argument("--folds", type=int, default=DEFAULT_FOLDS)
    args = parser.parse_args(argv)
    rows, digest = read_many(args.data)
    policy = train(rows, embedder_dir=args.embedder, cache=embedding_cache(args.data), k=args.folds,
                   target=args.target, data_hash=digest, progress=True)
    policy.save(args.out)
    t = policy.trained_on
    print(f"[router] {args.out}: {t['rows']} training rows, l2 {t['l2']:g} (text-only {t['l2_text_only']:g}), "
          f"out-of-fold APGR {t['oof_apgr_by_l2'][str(t['l2'])]:.3f} (text-only "
          f"{t['oof_apgr_text_only_by_l2'][str(t['l2_text_only'])]:.3f}); default threshold "
          f"{policy.default_threshold:.3f}: {t['oof_strong_share_at_threshold']:.1%} strong calls reach "
          f"{t['quality_target']:.0%} of the strong tier's quality out of fold on the {t['threshold_mix']} mix ("
          + "; ".join(f"{m}: {v['strong_share']:.1%} strong, {v['of_strong_quality']:.1%} of its quality"
                      for m, v in t["oof_at_threshold"].items()) + f"); {t['seconds']} s")
    return 0
