"""The learned router's features, model, artifact and baselines, without the embedding model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from services.classifier.baselines import LengthPolicy, RandomPolicy
from services.classifier.features import EMBEDDING_DIM, TEXT_FEATURES, Query, text_features, vector
from services.classifier.learned import ARTIFACT_VERSION, ArtifactError, LearnedPolicy, LinearModel
from services.classifier.training import fit_logistic, folds, probabilities

pytestmark = pytest.mark.unit

N_TEXT = len(TEXT_FEATURES)


def features_of(text: str, **kw: int) -> dict[str, float]:
    q = Query(text=text, conversation_chars=kw.get("conversation_chars", len(text)), turns=kw.get("turns", 1))
    return dict(zip(TEXT_FEATURES, text_features(q), strict=True))


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=EMBEDDING_DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def test_text_features_on_fixed_inputs() -> None:
    hello = features_of("hello there")
    assert len(hello) == N_TEXT
    assert hello["log_chars"] == pytest.approx(math.log1p(11))
    assert hello["log_words"] == pytest.approx(math.log1p(2))
    assert hello["chat_words"] == pytest.approx(math.log1p(1))
    assert hello["code_fence"] == 0 and hello["question_mark"] == 0 and hello["digit_share"] == 0

    code = features_of("Fix this:\n```python\ndef f(x):\n    return x + 1\n```")
    assert code["code_fence"] == 1
    assert code["code_keywords"] == pytest.approx(math.log1p(2))  # def, return
    assert code["indented_lines"] == pytest.approx(math.log1p(1))
    assert code["log_lines"] == pytest.approx(math.log1p(4))

    maths = features_of("What is $\\frac{3}{4}$ of 12? Solve it.")
    assert maths["question_mark"] == 1 and maths["question_start"] == 1
    assert maths["latex"] > 0 and maths["numbers"] == pytest.approx(math.log1p(3))
    assert maths["reasoning_words"] == pytest.approx(math.log1p(1))  # solve

    chat = features_of("thanks", conversation_chars=5000, turns=7)
    assert chat["log_conversation_chars"] == pytest.approx(math.log1p(5000))
    assert chat["log_turns"] == pytest.approx(math.log1p(7))


def test_a_long_text_is_scanned_in_part_but_measured_whole() -> None:
    long = "word " * 20_000
    f = features_of(long)
    assert f["log_chars"] == pytest.approx(math.log1p(len(long)))
    assert f["log_words"] == pytest.approx(math.log1p(20_000), rel=1e-3)


def test_vector_appends_the_embedding_and_refuses_a_missing_one() -> None:
    q = Query.single("hi", unit(1))
    assert vector(q, with_embedding=True).shape == (N_TEXT + EMBEDDING_DIM,)
    assert vector(q, with_embedding=False).shape == (N_TEXT,)
    with pytest.raises(ValueError, match="384-d query embedding, got none"):
        vector(Query.single("hi"), with_embedding=True)


def policy(seed: int = 0) -> LearnedPolicy:
    rng = np.random.default_rng(seed)

    def model(width: int) -> LinearModel:
        return LinearModel(rng.normal(size=width).tolist(), (rng.random(width) + 0.5).tolist(),
                           rng.normal(size=width).tolist(), 0.3)

    return LearnedPolicy(model=model(N_TEXT + EMBEDDING_DIM), fallback=model(N_TEXT), default_threshold=0.4,
                         trained_on={"rows": 3})


def test_score_is_the_models_probability_and_score_many_agrees() -> None:
    p = policy()
    qs = [Query.single("What is 2 + 2?", unit(1)), Query.single("hello", unit(2)), Query.single("no embedding")]
    one = [p.score(q) for q in qs]
    assert all(0 <= s <= 1 for s in one)
    assert p.score_many(qs) == pytest.approx(one)
    x = np.concatenate([text_features(qs[0]), qs[0].embedding])  # type: ignore[list-item]
    z = (x - np.array(p.model.mean)) / np.array(p.model.scale) @ np.array(p.model.weights) + p.model.bias
    assert one[0] == pytest.approx(1 / (1 + math.exp(-z)))
    # Without an embedding the fallback decides.
    assert one[2] == pytest.approx(1 / (1 + math.exp(-p.fallback.logits(np.array([text_features(qs[2])]))[0])))
    assert p.needs_embedding()
    with pytest.raises(ValueError, match="384-d"):
        p.score(Query.single("x", np.ones(3, dtype=np.float32)))


def test_the_artifact_round_trips(tmp_path: Path) -> None:
    p = policy()
    path = tmp_path / "router.json"
    p.save(path)
    loaded = LearnedPolicy.load(path)
    assert loaded.default_threshold == 0.4 and loaded.trained_on == {"rows": 3} and loaded.name == "learned"
    q = Query.single("Prove that there are infinitely many primes.", unit(3))
    assert loaded.score(q) == pytest.approx(p.score(q), abs=1e-12)
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize(("change", "message"), [
    (lambda a: a.update(version=ARTIFACT_VERSION + 1), "version"),
    (lambda a: a.update(text_features=["log_chars"]), "text_features differ"),
    (lambda a: a["model"].update(weights=[1.0]), "malformed"),
    (lambda a: a["fallback"].update(mean=[0.0] * 400, scale=[1.0] * 400, weights=[0.0] * 400), "wrong number"),
    (lambda a: a.update(default_threshold=1.5), "not in \\[0, 1\\]"),
    (lambda a: a.pop("model"), "missing or malformed 'model'"),
])
def test_a_bad_artifact_is_refused_naming_the_file_and_the_command(tmp_path: Path, change, message: str) -> None:
    raw = policy().to_json()
    change(raw)
    path = tmp_path / "router.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match=message) as e:
        LearnedPolicy.load(path)
    assert str(path) in str(e.value) and "python -m services.classifier.learned train" in str(e.value)


def test_a_missing_or_unreadable_artifact_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"is missing: build it with `python -m services\.classifier\.learned"):
        LearnedPolicy.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable"):
        LearnedPolicy.load(tmp_path / "bad.json")


def test_logistic_regression_fits_soft_labels() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = 1 / (1 + np.exp(-(2 * x[:, 0] - x[:, 1])))  # soft targets from a known model
    m = fit_logistic(x, y, l2=0.01)
    assert m.weights[0] / m.scale[0] == pytest.approx(2, rel=0.05)
    assert m.weights[1] / m.scale[1] == pytest.approx(-1, rel=0.05)
    assert abs(m.weights[2]) < 0.05
    assert np.abs(probabilities(m, x) - y).max() < 0.02


def test_folds_keep_a_group_together_and_do_not_change() -> None:
    keys = ["a", "b", "a", "c", "b"]
    f = folds(keys, 5)
    assert f[0] == f[2] and f[1] == f[4]
    assert f.tolist() == folds(keys, 5).tolist()


def test_baselines() -> None:
    r = RandomPolicy(seed=1)
    assert r.score(Query.single("a")) == r.score(Query.single("a")) != RandomPolicy(seed=2).score(Query.single("a"))
    assert 0 <= r.score(Query.single("b")) < 1 and not r.needs_embedding()
    length = LengthPolicy()
    short, long = Query.single("hi"), Query.single("x" * 2000)
    assert length.score(short) < length.score(long) < 1
    assert length.score(Query(text="hi", conversation_chars=500, turns=3)) == pytest.approx(0.5)
    assert length.score_many([short, long]).tolist() == [length.score(short), length.score(long)]
