"""What the learned router sees of a request: cheap text features and the query embedding.

Contract: :func:`text_features` maps a :class:`Query` to ``len(TEXT_FEATURES)`` floats, in that
order, in tens of microseconds (regular expressions over at most the first ``SCAN_CHARS``
characters; lengths are of the whole text), the same for the same query; :func:`vector` appends
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
#: Regular expressions look at this much of a long text: enough to see what it is, and a 100 kB
#: paste costs no more than a 4 kB one.
SCAN_CHARS = 4000

TEXT_FEATURES: tuple[str, ...] = (
    "log_chars", "log_words", "log_lines", "log_conversation_chars", "log_turns",
    "mean_word_length", "digit_share", "math_symbol_share", "code_symbol_share", "upper_share", "non_ascii_share",
    "code_fence", "code_keywords", "indented_lines", "latex", "numbers",
    "question_mark", "question_start", "reasoning_words", "task_verbs", "constraint_words", "chat_words",
)

_WORD = re.compile(r"\w+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_CODE_KEYWORDS = re.compile(
    r"\b(def|return|import|class|function|const|let|var|elif|lambda|public|static|void|#include|printf|println"
    r"|SELECT|FROM|WHERE|async|await|typing|self|None|null|true|false)\b")
_INDENTED = re.compile(r"^(?: {2,}|\t)\S", re.MULTILINE)
_LATEX = re.compile(r"\$[^$]+\$|\\(?:frac|sqrt|sum|int|cdot|times|le|ge|overline|triangle|angle|pi)\b|\^\{")
_QUESTION_START = re.compile(r"^\W*(what|how|why|when|where|who|which|is|are|do|does|can|could|should|would)\b",
                             re.IGNORECASE)
_REASONING = re.compile(
    r"\b(prove|derive|calculate|compute|solve|find|determine|how many|how much|probability|equation|integer"
    r"|sum|product|ratio|percent|optimi[sz]e|algorithm|complexity|implement|step by step|explain why|justify"
    r"|evaluate|analy[sz]e|compare)\b", re.IGNORECASE)
_TASK_VERBS = re.compile(r"\b(write|create|generate|compose|draft|design|develop|build|make|give|list|suggest"
                         r"|summari[sz]e|translate|rewrite|edit)\b", re.IGNORECASE)
_CONSTRAINTS = re.compile(r"\b(must|exactly|at least|at most|no more than|without|only|each|every|format|json"
                          r"|table|words|sentences|paragraphs)\b", re.IGNORECASE)
_CHAT = re.compile(r"\b(hi|hello|hey|thanks|thank you|please|my|me|i|you|your)\b", re.IGNORECASE)
_MATH_SYMBOLS = frozenset("+-*/^=<>%$\\")
_CODE_SYMBOLS = frozenset("{}[]();_#|&")


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


def _share(text: str, symbols: frozenset[str]) -> float:
    return sum(c in symbols for c in text) / len(text) if text else 0.0


def text_features(q: Query) -> list[float]:
    """The values of :data:`TEXT_FEATURES` for ``q``."""
    full = q.text
    text = full[:SCAN_CHARS]
    n = max(1, len(text))
    words = _WORD.findall(text)
    scale = len(full) / n  # counts seen in the scanned part, scaled to the whole text
    return [
        math.log1p(len(full)),
        math.log1p(len(words) * scale),
        math.log1p(full.count("\n")),
        math.log1p(max(q.conversation_chars, len(full))),
        math.log1p(max(1, q.turns)),
        sum(map(len, words)) / len(words) if words else 0.0,
        sum(c.isdigit() for c in text) / n,
        _share(text, _MATH_SYMBOLS),
        _share(text, _CODE_SYMBOLS),
        sum(c.isupper() for c in text) / n,
        sum(not c.isascii() for c in text) / n,
        float("```" in text),
        math.log1p(len(_CODE_KEYWORDS.findall(text))),
        math.log1p(len(_INDENTED.findall(text))),
        math.log1p(len(_LATEX.findall(text))),
        math.log1p(len(_NUMBER.findall(text))),
        float("?" in text),
        float(_QUESTION_START.match(text) is not None),
        math.log1p(len(_REASONING.findall(text))),
        math.log1p(len(_TASK_VERBS.findall(text))),
        math.log1p(len(_CONSTRAINTS.findall(text))),
        math.log1p(len(_CHAT.findall(text))),
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
