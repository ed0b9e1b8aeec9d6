"""The verifier trained and scored on real pairs (fow-cache's, bench/data/cache_paraphrases.jsonl and
bench/data/cache_vague_pairs.jsonl), with the real embedding model.

Needs what ``make install`` sets up: the exported all-MiniLM-L6-v2 and the ``fow-cache`` package.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.cache.embedding import DEFAULT_MODEL_DIR
from services.cache.quality import (
    BEST_COSINE_BUDGET,
    PARAPHRASE_PAIRS,
    Featurised,
    cross_validated_hits,
    default_pairs,
    featurise,
    main,
    read_pair_files,
    read_pairs,
    score_file,
    training_files,
)
from services.cache.verifier import DEFAULT_TARGET, load, threshold_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pairs_file() -> Path:
    if not (DEFAULT_MODEL_DIR / ".complete").exists():
        pytest.fail(f"{DEFAULT_MODEL_DIR} is missing: run `make install` (exports the embedding model once)")
    return default_pairs()


@pytest.fixture(scope="module")
def data(pairs_file: Path) -> Featurised:
    return featurise(read_pair_files(training_files())[0])


def test_train_then_score(pairs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    artifact = tmp_path / "cache-verifier.json"
    main(["train", "--out", str(artifact), "--target", "0.01"])
    raw = json.loads(artifact.read_text())
    assert raw["target_false_hit_rate"] == 0.01
    assert raw["trained_on"]["rows"] == 1103 and len(raw["trained_on"]["sha256"]) == 64
    assert len(raw["trained_on"]["sources"]) == 3  # fow-cache's pairs, the paraphrase set, the vague set
    assert raw["trained_on"]["oof_false_hit_rate"] <= 0.01
    assert raw["trained_on"]["oof_hit_rate"] > 0.3

    capsys.readouterr()
    main(["score", str(pairs_file), "--verifier", str(artifact)])
    out = capsys.readouterr().out
    assert "in-sample" in out  # scoring the training file says so
    for row in ("hit rate (all)", "false-hit rate (all)", "negation: false hit", "paraphrase: hit",
                "number_date: false hit", "cosine > 0.8"):
        assert row in out, row

    # The command's figures are the service's decisions: Verifier.decide on each pair.
    verifier = load(artifact, target=0.01)
    pairs, _ = read_pairs(pairs_file)
    decision = verifier.decide(pairs[0].a, pairs[0].b, 0.97)
    assert decision.hit == (decision.score > verifier.threshold)


def test_score_file_cross_validated_report(tmp_path: Path) -> None:
    """`skinflint cache score FILE --cv`'s report: the file's own folds, every category, the baselines."""
    report = score_file(PARAPHRASE_PAIRS, cv=True, folds=5, target=DEFAULT_TARGET, verifier_path=None)
    assert "360 pairs, cross-validated (5 folds" in report
    for row in ("hit rate (all)", "scope: false hit", "entity_swap: false hit", "cosine > 0.8"):
        assert row in report, row
    with pytest.raises(SystemExit, match=r"missing\.json is missing"):
        score_file(PARAPHRASE_PAIRS, verifier_path=tmp_path / "missing.json")


def test_cross_validated_beats_the_best_cosine_threshold(data: Featurised) -> None:
    """Scored only by verifiers that never saw the pair nor a near copy: false hits within the
    issue's 2% budget overall and per category, and more true pairs kept than any single cosine
    threshold keeps at 2% (chosen in-sample, which flatters it)."""
    accepted = cross_validated_hits(data, target=DEFAULT_TARGET, k=10)
    false_hit_rate = accepted[~data.same].mean()
    hit_rate = accepted[data.same].mean()
    assert false_hit_rate <= 0.02
    categories = np.array(data.categories)
    for cat in set(data.categories):
        rows = (categories == cat) & ~data.same
        if rows.any():
            assert accepted[rows].mean() <= 0.02, cat
    best = threshold_for(data.cosine, data.same, BEST_COSINE_BUDGET)
    assert hit_rate > (data.cosine[data.same] > best).mean() + 0.2
    assert (data.cosine[~data.same] > 0.8).mean() > 0.4  # the fixed 0.8 threshold fails as the issue says
