"""One question broken into what the verifier's features compare (:func:`analyse`), and how two
words relate: a typo or another form of one another (:func:`is_typo`), the same name, opposites.

Plain logic: no framework, no model. :mod:`services.cache.features` compares two analysed texts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from services.cache.lexicon import (
    ANTONYMS,
    CONTRACTIONS,
    DATE_WORDS,
    FILLERS,
    FRACTION_WORDS,
    NEGATING_PREFIXES,
    NEGATIONS,
    NUMBER_WORDS,
    REQUEST_WORDS,
    STOPWORDS,
    SUFFIXES,
    SYNONYMS,
    TIME_UNITS,
)
from services.shared.canonical import normalise_text

_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
# A leading minus only where it cannot be a dash between words or a subtraction: "f(-2)", " -3".
_NUMBER = re.compile(r"(?:(?<=[\s(\[=,])-)?\d+(?:[.,:/]\d+)*")
_CLOCK = re.compile(r"\d+(?:am|pm)")
_SENTENCE_START = re.compile(r"(?:^|[.!?]\s+|\n)\W*([^\W_]+)")


@dataclass(frozen=True)
class Text:
    """One question, tokenised once."""

    tokens: tuple[str, ...]  # lower-case words, in order
    words: frozenset[str]
    negations: int
    numbers: frozenset[str]
    dates: frozenset[str]  # named times: weekdays, months, seasons, "tomorrow"
    units: frozenset[str]  # units of time: "hour", "week", "year"
    entities: frozenset[str]  # lower-cased capitalised words that do not open a sentence
    content: tuple[str, ...]  # the tokens without fillers, in order: what the diff aligns
    stems: tuple[str, ...]  # ``content``'s stems


@lru_cache(maxsize=4096)
def analyse(text: str) -> Text:
    """``text`` (normalised as the canonical form does) broken into what the features compare."""
    text = normalise_text(text)
    raw = _WORD.findall(text)
    tokens = tuple(_expand(t.lower().replace("\u2019", "'") for t in raw))
    openers = {m.start(1) for m in _SENTENCE_START.finditer(text)}
    entities = set()
    for match in _WORD.finditer(text):
        word = match.group(0)
        if word != "I" and any(c.isupper() for c in word) and match.start() not in openers:
            entities.add(_strip_possessive(word.lower()))
    negations = sum(1 for t in tokens if t in NEGATIONS)
    clock = {t for t in tokens if _CLOCK.fullmatch(t)}  # "7am" / "7pm" differ as numbers do
    numbers = {_canonical_number(n) for n in _NUMBER.findall(text)} | _number_words(tokens) | clock
    dates = {DATE_WORDS[t] for t in tokens if t in DATE_WORDS}
    units = frozenset(TIME_UNITS[t] for t in tokens if t in TIME_UNITS)
    content = _content(tokens)
    return Text(tokens, frozenset(tokens), negations, frozenset(numbers), frozenset(dates), units,
                frozenset(entities), content, tuple(stem(t) for t in content))


def _canonical_number(n: str) -> str:
    """One spelling per value: "76,000" = "76000", "15.00" = "15", "1/2" = "0.5"; times and
    dates ("10:30", "3/4/2024") and version-like strings stay as written."""
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", n):
        n = n.replace(",", "")
    if re.fullmatch(r"-?\d+/\d+", n):
        top, bottom = n.split("/")
        return _canonical_number(f"{int(top) / int(bottom):.6f}") if int(bottom) else n
    if re.fullmatch(r"-?\d+(?:\.\d+)?", n):
        return f"{float(n):.6f}".rstrip("0").rstrip(".")
    return n


def _number_words(tokens: tuple[str, ...]) -> set[str]:
    """Numbers written as words; "a third" / "one quarter" is a fraction, "third" alone an ordinal."""
    found = set()
    for i, t in enumerate(tokens):
        if t in FRACTION_WORDS and (t == "half" or (i > 0 and tokens[i - 1] in ("a", "one"))):
            found.add(_canonical_number(FRACTION_WORDS[t]))
        elif t in NUMBER_WORDS:
            value = NUMBER_WORDS[t]
            found.add(_canonical_number(value) if value[0].isdigit() and value[-1].isdigit() else value)
    return found


def _expand(tokens: Iterable[str]) -> Iterable[str]:
    for t in tokens:
        if t in CONTRACTIONS:
            yield from CONTRACTIONS[t]
            continue
        for suffix, full in SUFFIXES:
            if t.endswith(suffix) and len(t) > len(suffix):
                yield t[: -len(suffix)]
                yield full
                break
        else:
            yield t


def _strip_possessive(word: str) -> str:
    return word[:-2] if word.endswith(("'s", "\u2019s")) else word


def edit_distance(a: str, b: str, limit: int = 2) -> int:
    """Optimal-string-alignment distance (insert, delete, substitute, swap two neighbours),
    capped at ``limit + 1``: only "is this a typo" is ever asked."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return min(prev[-1], limit + 1)


_ENDINGS = ("ation", "ing", "ed", "es", "s", "e", "al", "ly", "y")


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A crude stem: the word without one common ending (waiting/wait, quotation/quote)."""
    word = _strip_possessive(word)
    for ending in _ENDINGS:
        if word.endswith(ending) and len(word) - len(ending) >= 3:
            return word[: -len(ending)]
    return word


@lru_cache(maxsize=65536)
def is_typo(a: str, b: str) -> bool:
    """Whether two different words are one misspelt as the other, or another form of it (plural,
    possessive, -ing, -ed ...) or a common synonym (:data:`~services.cache.lexicon.SYNONYMS`):
    one edit for words up to five letters, two for longer ones;
    digits must match exactly and opposites (safe/unsafe) never are. Cached: a service asks about
    the same words again and again."""
    if any(c.isdigit() for c in a) or any(c.isdigit() for c in b):
        return False
    a, b = _strip_possessive(a), _strip_possessive(b)
    if stem(a) in (b, stem(b)) or stem(b) == a or b in SYNONYMS.get(a, ()) or a in SYNONYMS.get(b, ()):
        return not _is_opposite(a, b)
    shorter = min(len(a), len(b))
    limit = 1 if shorter <= 5 else 2
    # Cheap refusals first: each edit brings in or drops at most one distinct letter.
    if shorter < 3 or abs(len(a) - len(b)) > limit or len(set(a) ^ set(b)) > 2 * limit:
        return False
    return edit_distance(a, b, limit) <= limit and not _is_opposite(a, b)


def _typo_matches(left: Iterable[str], right: set[str], names: frozenset[str] = frozenset()
                  ) -> tuple[int, set[str], set[str]]:
    """Greedily pair words of ``left`` with typo twins in ``right``; returns (pairs, unmatched
    left, unmatched right). A word that is a name (in ``names``) pairs only as a name would
    (:func:`_same_name`)."""
    candidates = sorted(right)
    free = set(right)
    unmatched_left: set[str] = set()
    pairs = 0
    for word in sorted(left):
        twin = next((w for w in candidates if w in free and _may_pair(word, w) and _twins(word, w, names)), None)
        if twin is None:
            unmatched_left.add(word)
        else:
            free.discard(twin)
            pairs += 1
    return pairs, unmatched_left, free


def _may_pair(a: str, b: str) -> bool:
    """A quick filter before :func:`_twins`: most pairs of words are far apart in length and
    letters, and are neither forms nor synonyms of each other (no typo, no same name)."""
    a, b = _strip_possessive(a), _strip_possessive(b)
    if abs(len(a) - len(b)) <= 2 and len(set(a) ^ set(b)) <= 4:
        return True
    return (stem(a) == stem(b) or a.startswith(b) or b.startswith(a)
            or b in SYNONYMS.get(a, ()) or a in SYNONYMS.get(b, ()))


def _twins(a: str, b: str, names: frozenset[str]) -> bool:
    if _strip_possessive(a) in names or _strip_possessive(b) in names:
        return _same_name(_strip_possessive(a), _strip_possessive(b))
    return is_typo(a, b)


def _same_name(a: str, b: str) -> bool:
    """A misspelt name is the same name only when it is long and one edit away: short names a
    letter apart are other names (Mary / Mark), and so are longer ones two apart (Australia /
    Austria)."""
    return a == b or (min(len(a), len(b)) >= 6 and abs(len(a) - len(b)) <= 1
                      and not any(c.isdigit() for c in a + b) and edit_distance(a, b, limit=1) <= 1)


def _entity_in(entity: str, other: Text) -> bool:
    """Whether ``other`` names ``entity`` too (see :func:`_same_name`)."""
    if entity in other.entities or entity in other.words:
        return True
    return any(_same_name(entity, _strip_possessive(n)) for n in other.entities | other.words)


def _is_opposite(a: str, b: str) -> bool:
    if (a, b) in ANTONYMS:
        return True
    return min(len(a), len(b)) >= 3 and any(a == p + b or b == p + a for p in NEGATING_PREFIXES)


def _content(tokens: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(t for t in tokens if t not in FILLERS)


def _is_content(word: str) -> bool:
    return word not in STOPWORDS and word not in REQUEST_WORDS
