"""The router data set's labels: the expected quality of each tier, per source and category.

Nothing here was measured on these prompts (no strong model runs on this machine): each value is
our estimate of the *expected* quality, on a 0..1 scale, of

- ``weak``: a small instruction-tuned chat model of 0.1-1B parameters (the range of the tiers
  skinflint serves itself; SmolLM2-135M, which ``make run`` serves, sits at the bottom of it);
- ``strong``: a current frontier model (the bought tier),

answering a prompt of that kind: for benchmarks with a checkable answer, the share answered
right; for open chat (MT-Bench), a judge's 1-10 mark divided by 10. The estimates lean on
published results of such models (model cards and leaderboards: GSM8K, MMLU, GPQA, HumanEval,
MT-Bench by category), rounded, and on one rule where none exist: a short everyday question or
request is answered about as well by either tier. Where published results span the weak range
(GSM8K: ~2% for a 135M model, ~45-50% for 0.5-1B ones) we took a value toward its lower middle.
They are priors that let a router be trained and compared before a deployment has traffic, not
judgements of single prompts: every GSM8K problem gets the same pair, easy or hard.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Quality:
    """Expected quality of the weak and the strong tier on a kind of prompt (0..1 each)."""

    weak: float
    strong: float
    why: str


# Multiple choice with four options: a model that guesses scores 0.25, which is where a weak
# model sits on the hardest subjects and on GPQA.
_CHANCE = 0.25

#: (source, category) -> quality. "*" stands for every category of the source.
QUALITY: dict[tuple[str, str], Quality] = {
    ("fow-cache", "*"): Quality(1.0, 1.0, "everyday customer-support question: either tier answers alike"),
    ("vague", "*"): Quality(0.9, 1.0, "short, vague request: a generic answer either way, the strong one a bit better"),
    ("sharegpt", "question"): Quality(0.9, 1.0, "short everyday question, no code, maths or domain jargon"),
    ("sharegpt", "request"): Quality(0.75, 1.0, "short everyday request (a title, a list, a short message)"),
    ("gsm8k", "*"): Quality(0.2, 0.95, "grade-school word problem: multi-step arithmetic"),
    ("aime2025", "*"): Quality(0.0, 0.8, "olympiad maths: out of reach of small models"),
    ("gpqa", "*"): Quality(_CHANCE, 0.8, "graduate science, multiple choice: a small model guesses"),
    ("humaneval", "*"): Quality(0.15, 0.95, "write a Python function from its docstring"),
    ("mtbench", "writing"): Quality(0.6, 0.95, "MT-Bench writing (judge mark / 10)"),
    ("mtbench", "roleplay"): Quality(0.6, 0.95, "MT-Bench roleplay"),
    ("mtbench", "humanities"): Quality(0.6, 0.95, "MT-Bench humanities"),
    ("mtbench", "stem"): Quality(0.5, 0.95, "MT-Bench STEM"),
    ("mtbench", "extraction"): Quality(0.4, 0.95, "MT-Bench extraction"),
    ("mtbench", "reasoning"): Quality(0.25, 0.9, "MT-Bench reasoning"),
    ("mtbench", "math"): Quality(0.15, 0.9, "MT-Bench math"),
    ("mtbench", "coding"): Quality(0.2, 0.9, "MT-Bench coding"),
    ("mmlu", "easy"): Quality(0.6, 0.95, "MMLU subject small models do best on (social sciences, everyday knowledge)"),
    ("mmlu", "medium"): Quality(0.45, 0.9, "MMLU subject of middling difficulty (sciences and humanities by recall)"),
    ("mmlu", "hard"): Quality(0.3, 0.8, "MMLU subject with calculation, formal reasoning or long cases"),
}

#: MMLU subjects by how hard they are for small models, from per-subject results of small and
#: large models (the subjects with computation or formal logic sit near chance for small models).
MMLU_EASY = frozenset({
    "high school government and politics", "high school geography", "high school psychology", "marketing",
    "management", "sociology", "us foreign policy", "world religions", "miscellaneous", "human sexuality",
    "public relations", "nutrition", "human aging", "high school us history", "high school world history",
    "high school european history", "international law", "jurisprudence", "business ethics", "prehistory",
})
MMLU_HARD = frozenset({
    "abstract algebra", "college mathematics", "high school mathematics", "elementary mathematics",
    "college physics", "high school physics", "college chemistry", "high school chemistry", "econometrics",
    "formal logic", "machine learning", "high school statistics", "college computer science", "moral scenarios",
    "professional law", "professional accounting", "global facts",
})


def mmlu_tier(subject: str) -> str:
    """``easy``, ``medium`` or ``hard`` for an MMLU subject (unknown subjects are ``medium``)."""
    if subject in MMLU_EASY:
        return "easy"
    if subject in MMLU_HARD:
        return "hard"
    return "medium"


def quality(source: str, category: str) -> Quality:
    """The label of a (source, category); an MMLU category is its subject. Raises ``KeyError``
    naming the pair when the table has no entry (a new source must be labelled on purpose)."""
    if source == "mmlu":
        category = mmlu_tier(category)
    for key in ((source, category), (source, "*")):
        if key in QUALITY:
            return QUALITY[key]
    raise KeyError(f"no label for source {source!r}, category {category!r}: add it to services/classifier/labels.py")
