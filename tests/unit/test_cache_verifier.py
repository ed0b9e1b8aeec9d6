"""The verifier's model and calibration, on synthetic data: fitted weights point the right way,
the threshold keeps false hits at or under the target, and the artifact refuses what does not fit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from services.cache.features import FEATURE_NAMES
from services.cache.verifier import (
    ArtifactError,
    fit_logistic,
    folds,
    load,
    out_of_fold_scores,
    threshold_for,
    train,
)

pytestmark = pytest.mark.unit


def synthetic(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Feature 0 separates the classes (noisily), feature 1 is noise, feature 2 is constant;
    padded to the real feature count so a trained verifier can be saved and loaded."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.5
    x = np.zeros((n, len(FEATURE_NAMES)))
    x[:, 0] = np.where(y, 1.0, -1.0) + rng.normal(0, 1.0, n)
    x[:, 1] = rng.normal(0, 1, n)
    x[:, 2] = 5.0
    groups = [f"q{i // 2}" for i in range(n)]  # pairs of rows share a first question
    return x, y, groups


def test_fit_finds_the_signal() -> None:
    x, y, _ = synthetic()
    model = fit_logistic(x, y, l2=1.0, negative_weight=1.0)
    assert model.weights[0] > 1.0
    assert abs(model.weights[1]) < 0.3
    assert model.weights[2] == 0.0  # a constant feature carries nothing (and does not divide by zero)
    accuracy = ((model.scores(x) > 0) == y).mean()
    assert accuracy > 0.8


def test_stronger_l2_shrinks_weights() -> None:
    x, y, _ = synthetic()
    assert abs(fit_logistic(x, y, l2=100.0).weights[0]) < abs(fit_logistic(x, y, l2=0.1).weights[0])


def test_negative_weight_lowers_scores() -> None:
    x, y, _ = synthetic()
    plain, wary = fit_logistic(x, y, negative_weight=1.0), fit_logistic(x, y, negative_weight=10.0)
    assert wary.scores(x).mean() < plain.scores(x).mean()


def test_fit_refuses_one_class() -> None:
    x, y, _ = synthetic()
    with pytest.raises(ValueError, match="both classes"):
        fit_logistic(x, np.ones_like(y))


@pytest.mark.parametrize("target", [0.0, 0.01, 0.02, 0.1, 0.5])
def test_threshold_keeps_false_hits_under_target_and_is_the_lowest(target: float) -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(0, 1, 1000)
    same = rng.random(1000) < 0.5
    scores[same] += 1.5
    t = threshold_for(scores, same, target)
    negatives = scores[~same]
    assert (negatives > t).mean() <= target
    # The next lower negative score as threshold would let one more false hit through, over target.
    lower = negatives[negatives <= t].max()
    assert ((negatives >= lower).sum()) / len(negatives) > target


def test_threshold_with_ties_never_exceeds_target() -> None:
    scores = np.array([1.0, 1.0, 1.0, 0.0, 2.0, 2.0])
    same = np.array([False, False, False, False, True, True])
    t = threshold_for(scores, same, 0.3)  # one of four negatives allowed, but three tie at 1.0
    assert t == 1.0 and (scores[~same] > t).sum() == 0


def test_threshold_bad_input() -> None:
    with pytest.raises(ValueError, match="target"):
        threshold_for(np.zeros(3), np.array([True, False, False]), 1.0)
    with pytest.raises(ValueError, match="same_answer=false"):
        threshold_for(np.zeros(2), np.array([True, True]), 0.01)


def test_folds_keep_groups_together_and_are_stable() -> None:
    groups = [f"g{i % 37}" for i in range(500)]
    fold = folds(groups, 5)
    assert set(fold) == set(range(5))
    for g in set(groups):
        assert len({f for f, h in zip(fold, groups, strict=True) if h == g}) == 1
    assert (fold == folds(groups, 5)).all()


def test_out_of_fold_scores_never_see_their_row() -> None:
    """A row whose label contradicts its feature is scored by a model that never saw it."""
    x, y, groups = synthetic()
    x[0, 0], y[0] = 50.0, False  # far on the positive side, labelled negative
    oof = out_of_fold_scores(x, y, folds(groups, 5), l2=1.0)
    assert oof[0] > 5


def test_train_calibrates_out_of_fold() -> None:
    x, y, groups = synthetic(800)
    verifier = train(x, y, groups, target=0.02, k=5, data_hash="abc")
    figures = verifier.trained_on
    assert figures["oof_false_hit_rate"] <= 0.02
    assert figures["oof_hit_rate"] > 0.2
    assert figures["sha256"] == "abc" and figures["rows"] == 800 and figures["folds"] == 5
    # In-sample scores of the final model are optimistic: the threshold is not taken from them.
    assert verifier.threshold == threshold_for(out_of_fold_scores(x, y, folds(groups, 5)), y, 0.02)


def test_artifact_round_trip_and_decide(tmp_path: Path) -> None:
    x, y, groups = synthetic()
    verifier = train(x, y, groups, target=0.01, k=5)
    path = tmp_path / "v.json"
    verifier.save(path)
    loaded = load(path, target=0.01)
    assert loaded.threshold == verifier.threshold and loaded.model == verifier.model
    np.testing.assert_allclose(loaded.score(x), verifier.score(x))
    decision = loaded.decide("Cancel my subscription", "Cancel my subscription", 0.99)
    assert decision.hit == (decision.score > loaded.threshold) and decision.cosine == 0.99
    assert json.loads(path.read_text())["feature_names"] == list(FEATURE_NAMES)


def test_load_refuses_naming_file_and_command(tmp_path: Path) -> None:
    x, y, groups = synthetic()
    path = tmp_path / "v.json"
    with pytest.raises(ArtifactError, match=r"v\.json is missing: .*verifier train"):
        load(path)
    train(x, y, groups, target=0.01, k=5).save(path)
    with pytest.raises(ArtifactError, match=r"target_false_hit_rate 0\.01, configured 0\.02"):
        load(path, target=0.02)
    raw = json.loads(path.read_text())
    raw["feature_names"] = ["cosine"]
    path.write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="feature_names differ"):
        load(path)
    raw["feature_names"] = list(FEATURE_NAMES)
    del raw["threshold"]
    path.write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="threshold"):
        load(path)
    path.write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable"):
        load(path)


def test_no_allowance_accepts_no_negative() -> None:
    x, y, groups = synthetic()
    verifier = train(x, y, groups, target=0.0, k=5)
    assert math.isfinite(verifier.threshold)
    assert verifier.trained_on["oof_false_hit_rate"] == 0.0


def test_read_pairs_names_the_bad_line(tmp_path: Path) -> None:
    from services.cache.quality import read_pairs

    path = tmp_path / "pairs.jsonl"
    path.write_text('{"a": "x", "b": "y", "same_answer": true, "category": "c", "extra": 1}\n\n'
                    '{"a": "x", "same_answer": false}\n')
    with pytest.raises(SystemExit, match=r"pairs\.jsonl:3: b: Field required"):
        read_pairs(path)
    path.write_text('{"a": "x", "b": "y", "same_answer": true}\n')
    pairs, digest = read_pairs(path)
    assert pairs[0].category == "all" and len(digest) == 64


def test_table_reports_hit_and_false_hit_rates_per_category() -> None:
    from services.cache.quality import Featurised, table

    same = np.array([True, True, True, False, False, False])
    data = Featurised(x=np.zeros((6, 1)), same=same, cosine=np.zeros(6), groups=list("abcdef"),
                      categories=["para", "para", "typo", "neg", "neg", "num"])
    out = table(data, {"mine": np.array([True, False, True, True, False, False])})
    lines = {line.strip().split("  ")[0]: line for line in out.splitlines()}
    assert "66.7% (2/3)" in lines["hit rate (all)"]
    assert "33.3% (1/3)" in lines["false-hit rate (all)"]
    assert "50.0% (1/2)" in lines["para: hit"] and "50.0% (1/2)" in lines["neg: false hit"]
    assert "0.0% (0/1)" in lines["num: false hit"] and "100.0% (1/1)" in lines["typo: hit"]
