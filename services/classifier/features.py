"""What the learned router sees of a request: cheap text features and the query embedding.

Contract: :func:`text_features` maps a :class:`Query` to ``len(TEXT_FEATURES)`` floats, in that
order, in tens of microseconds (regular expressions over at most the first ``SCAN_CHARS``
characters; lengths and word counts are of the whole text), the same for the same query; :func:`vector` appends
the 384-d embedding when the model uses it. The names are stored in the router's artifact, which
is refused when they differ. Plain logic: no framework.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: The embedding's width (all-MiniLM-L6-v2).
EMBEDDING_DIM = 384
#: Words and patterns are looked for in this much of a long text: enough to see what it is, and a
#: 100 kB paste costs no more than a 2 kB one.
SCAN_CHARS = 2000

TEXT_FEATURES: tuple[str, ...] = (
    "log_chars", "log_words", "log_lines", "log_conversation_chars", "log_turns",
    "mean_word_length", "digit_share", "math_symbol_share", "code_symbol_share", "upper_share", "non_ascii_share",
    "code_fence", "code_keywords", "indented_lines", "latex", "numbers",
    "question_mark", "question_start", "reasoning_words", "task_verbs", "constraint_words", "chat_words",
)

_WORD = re.compile(r"\w+")
_INDENTED = re.compile(r"^(?: {2,}|\t)\S", re.MULTILINE)
_LATEX = re.compile(r"\$[^$]+\$|\\(?:frac|sqrt|sum|int|cdot|times|le|ge|overline|triangle|angle|pi)\b|\^\{")
_QUESTION_START = re.compile(r"^\W*(what|how|why|when|where|who|which|is|are|do|does|can|could|should|would)\b",
                             re.IGNORECASE)
# Word lists are looked up one word at a time in a dict: one pass over the words, where a
# case-insensitive regular expression of alternatives costs ~0.1 us per character each.
_CODE_KEYWORDS = frozenset([  # case matters: "None" and "SELECT" are code, "none" and "select" English
    "def", "return", "import", "elif", "lambda", "const", "var", "let", "async", "await", "self", "None",
    "null", "true", "false", "void", "static", "public", "printf", "println", "typing", "SELECT", "FROM",
    "WHERE"
])
_LEXICON: dict[str, str] = {
    **dict.fromkeys([
        "prove", "derive", "calculate", "compute", "solve", "find", "determine", "probability", "equation",
        "integer", "sum", "product", "ratio", "percent", "optimise", "optimize", "algorithm", "complexity",
        "implement", "justify", "evaluate", "analyse", "analyze", "compare"
    ], "reasoning_words"),
    **dict.fromkeys([
        "write", "create", "generate", "compose", "draft", "design", "develop", "build", "make", "give",
        "list", "suggest", "summarise", "summarize", "translate", "rewrite", "edit"
    ], "task_verbs"),
    **dict.fromkeys([
        "must", "exactly", "without", "only", "each", "every", "format", "json", "table", "words",
        "sentences", "paragraphs"
    ], "constraint_words"),
    **dict.fromkeys([
        "hi", "hello", "hey", "thanks", "please", "my", "me", "i", "you", "your"
    ], "chat_words"),
}
_PHRASES: dict[str, str] = {
    "how many": "reasoning_words", "how much": "reasoning_words", "step by step": "reasoning_words",
    "explain why": "reasoning_words", "at least": "constraint_words", "at most": "constraint_words",
    "no more than": "constraint_words",
}
# Counting by deleting (str.translate runs in C): a Python loop over a few thousand characters
# would be most of a decision's time.
_DIGITS = str.maketrans("", "", "0123456789")
_UPPER = str.maketrans("", "", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_MATH_SYMBOLS = str.maketrans("", "", "+-*/^=<>%$\\")
_CODE_SYMBOLS = str.maketrans("", "", "{}[]();_#|&")


@dataclass(frozen=True)
class Query:
    """What the router decides on: the last user turn, how long the whole conversation is, and
    (when computed) the last turn's embedding, a unit 384-d float32 vector."""

    text: str
    conversation_chars: int
    turns: int
    embedding: npt.NDArray[np.float32] | None = None

    @classmethod
    def single(cls, text: str, embedding: npt.NDArray[np.float32] | None = None) -> Query:
        """A one-message conversation."""
        return cls(text=text, conversation_chars=len(text), turns=1, embedding=embedding)


def _share(text: str, deleting: dict[int, int | None]) -> float:
    """Share of ``text``'s characters that the translation table ``deleting`` removes."""
    return (len(text) - len(text.translate(deleting))) / len(text) if text else 0.0


def text_features(q: Query) -> list[float]:
    """The values of :data:`TEXT_FEATURES` for ``q``."""
    full = q.text
    text = full[:SCAN_CHARS]
    n = max(1, len(text))
    words = _WORD.findall(text)
    scale = len(full) / n  # counts seen in the scanned part, scaled to the whole text
    lower = text.lower()
    counts = dict.fromkeys(("reasoning_words", "task_verbs", "constraint_words", "chat_words"), 0)
    code = numbers = letters = 0
    for w in words:
        letters += len(w)
        if w[0].isdigit():
            numbers += 1
        elif w in _CODE_KEYWORDS:
            code += 1
        kind = _LEXICON.get(w.lower())
        if kind:
            counts[kind] += 1
    for phrase, kind in _PHRASES.items():
        counts[kind] += lower.count(phrase)
    return [
        math.log1p(len(full)),
        math.log1p(len(words) * scale),
        math.log1p(full.count("\n")),
        math.log1p(max(q.conversation_chars, len(full))),
        math.log1p(max(1, q.turns)),
        letters / len(words) if words else 0.0,
        _share(text, _DIGITS),
        _share(text, _MATH_SYMBOLS),
        _share(text, _CODE_SYMBOLS),
        _share(text, _UPPER),
        (len(text) - len(text.encode("ascii", "ignore"))) / n,
        float("```" in text),
        math.log1p(code),
        math.log1p(len(_INDENTED.findall(text))),
        math.log1p(len(_LATEX.findall(text))),
        math.log1p(numbers),
        float("?" in text),
        float(_QUESTION_START.match(text) is not None),
        math.log1p(counts["reasoning_words"]),
        math.log1p(counts["task_verbs"]),
        math.log1p(counts["constraint_words"]),
        math.log1p(counts["chat_words"]),
    ]


def vector(q: Query, *, with_embedding: bool) -> npt.NDArray[np.float64]:
    """The model's input for ``q``: text features, then the embedding when ``with_embedding``.
    Raises ``ValueError`` when the embedding is wanted and missing or not 384-d."""
    x = np.asarray(text_features(q), dtype=np.float64)
    if not with_embedding:
        return x
    if q.embedding is None or q.embedding.shape != (EMBEDDING_DIM,):
        got = "none" if q.embedding is None else f"shape {q.embedding.shape}"
        raise ValueError(f"the router's model needs a {EMBEDDING_DIM}-d query embedding, got {got}")
    return np.concatenate([x, q.embedding.astype(np.float64, copy=False)])
