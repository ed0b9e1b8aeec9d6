"""The traffic mix: every shipped row has a kind, the weights give each kind its share, a
deployment's own rows are refused by it (and measured as they come), and the training's default
threshold is calibrated on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.classifier import dataset, labels, mix
from services.classifier.dataset import Row
from services.classifier.evaluate import mix_weights
from services.classifier.training import calibration_mix

pytestmark = pytest.mark.unit


def row(source: str, category: str = "c", weak: float = 0.5, strong: float = 1.0) -> Row:
    return Row(f"{source}:{category}", f"prompt {source} {category}", source, category, "test", weak, strong)


@pytest.mark.parametrize(("source", "category", "kind"), [
    ("fow-cache", "fow-cache", "chat"), ("vague", "vague", "chat"), ("sharegpt", "question", "chat"),
    ("sharegpt", "request", "chat"), ("mtbench", "writing", "chat"), ("mtbench", "roleplay", "chat"),
    ("mtbench", "stem", "chat"), ("mtbench", "math", "math"), ("mtbench", "reasoning", "math"),
    ("mtbench", "coding", "code"), ("mmlu", "marketing", "knowledge"), ("gsm8k", "gsm8k", "math"),
    ("aime2025", "aime2025", "math"), ("humaneval", "humaneval", "code"), ("gpqa", "gpqa", "science"),
    # A paraphrase is the kind of its original.
    ("paraphrase-set", "gsm8k/gsm8k", "math"), ("paraphrase-set", "mtbench/writing", "chat"),
    ("paraphrase-set", "mtbench/coding", "code"), ("paraphrase-set", "mmlu/nutrition", "knowledge"),
    ("mine", "all", None), ("paraphrase-set", "mine/x", None),
])
def test_each_source_has_its_kind(source: str, category: str, kind: str | None) -> None:
    assert mix.kind_of(source, category) == kind


def test_every_labelled_source_has_a_kind_with_a_share() -> None:
    # A new source labelled in labels.py must be placed in the mix on purpose.
    for source, category in labels.QUALITY:
        assert mix.kind_of(source, "x" if category == "*" else category) in mix.TRAFFIC_SHARES, (source, category)
    assert sum(mix.TRAFFIC_SHARES.values()) == pytest.approx(1.0)


def kind_shares(kinds: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    return {str(k): float(weights[kinds == k].sum() / weights.sum()) for k in np.unique(kinds)}


def test_the_weights_give_each_kind_its_share_equal_within_a_kind_averaging_1() -> None:
    rows = [row("fow-cache")] * 8 + [row("gsm8k")] * 30 + [row("mmlu", "marketing")] * 20 + [row("humaneval")] * 5 \
        + [row("gpqa")] * 2
    w = mix.TRAFFIC.weights(rows)
    assert len(w) == len(rows) and w.mean() == pytest.approx(1.0)
    assert kind_shares(mix.TRAFFIC.kinds(rows), w) == pytest.approx(dict(mix.TRAFFIC_SHARES))
    assert np.all(w[:8] == w[0]) and w[0] == pytest.approx(0.70 / 8 * len(rows))
    assert mix.BENCHMARK.weights(rows).tolist() == [1.0] * len(rows)


def test_a_kind_missing_gives_its_share_to_the_others_in_proportion() -> None:
    rows = [row("sharegpt", "question")] * 3 + [row("gsm8k")] * 4
    shares = kind_shares(mix.TRAFFIC.kinds(rows), mix.TRAFFIC.weights(rows))
    assert shares == pytest.approx({"chat": 0.7 / 0.8, "math": 0.1 / 0.8})


def test_a_deployments_own_rows_are_not_re_weighted() -> None:
    rows = [row("fow-cache"), row("my-traffic", "all"), row("other", "all")]
    with pytest.raises(mix.MixError, match=r"not \['my-traffic', 'other'\]"):
        mix.TRAFFIC.weights(rows)
    assert mix_weights(rows, "both").keys() == {"benchmark"}
    with pytest.raises(SystemExit, match="my-traffic"):
        mix_weights(rows, "traffic")
    name, w = calibration_mix(rows)
    assert name == "rows as given" and w.tolist() == [1.0, 1.0, 1.0]


def test_the_shipped_build_is_re_weighted_and_the_threshold_calibrated_on_traffic(tmp_path: Path) -> None:
    rows = dataset.build(tmp_path / "data", mmlu_per_subject=1, sharegpt_limit=40)
    weights = mix_weights(rows, "both")
    assert list(weights) == ["traffic", "benchmark"]
    assert kind_shares(mix.TRAFFIC.kinds(rows), weights["traffic"]) == pytest.approx(dict(mix.TRAFFIC_SHARES))
    name, w = calibration_mix([r for r in rows if r.split == "train"])
    assert name == "traffic" and w.mean() == pytest.approx(1.0)


def test_the_bench_bootstraps_both_mixes_and_judges_the_traffic_one() -> None:
    from bench import router_eval
    from services.classifier.evaluate import evaluate

    rng = np.random.default_rng(1)
    rows = [row("fow-cache", weak=1.0)] * 40 + [row("sharegpt", "question", 0.9)] * 40 + [row("gsm8k", weak=0.2)] * 60
    rows = [Row(f"{i}", f"p{i}", r.source, r.category, "test", r.weak, r.strong) for i, r in enumerate(rows)]
    gain = np.array([r.gain for r in rows])
    scores = {"learned": gain + 0.01 * rng.random(len(rows)), "random": rng.random(len(rows)),
              "length": gain[::-1].copy(), "oracle (ceiling)": gain}
    margins = router_eval.bootstrap_margins(rows, scores, list(mix.MIXES.values()), draws=50)
    assert margins.keys() == {"traffic", "benchmark"}
    for by_baseline in margins.values():
        low, mid, high = by_baseline["random"]
        assert 0 < low <= mid <= high
    reports = {r.name: r for r in evaluate(rows, scores, weights=mix.TRAFFIC.weights(rows))}
    fast = {"p99_us": 100.0, "decisions_per_s": 10_000.0}
    assert router_eval.verdict(reports, margins["traffic"], fast) == []
    # The same margins but slow decisions: the latency targets still count.
    assert len(router_eval.verdict(reports, margins["traffic"], {"p99_us": 9000.0, "decisions_per_s": 10.0})) == 2
    tied = dict(margins["traffic"], length=(-0.01, 0.0, 0.01))
    assert any("not clearly above length" in p for p in router_eval.verdict(reports, tied, fast))
