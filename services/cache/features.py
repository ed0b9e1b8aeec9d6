"""What the semantic cache's verifier looks at in a candidate pair: (the new question, a cached one).

Cosine similarity alone serves a wrong answer for half the pairs that must not hit (issue 12):
"Cancel my subscription" / "Don't cancel my subscription" are close in embedding space. The
features below name the small differences that change an answer (a negation, an antonym, a
number or date, a named entity, words that are not typos of each other) and how much wording two
questions share. Every feature is symmetric in the two texts and is a float; the order and names
are :data:`FEATURE_NAMES`, which the calibration artifact records (a model trained on another
list is refused at load).

Plain logic: no framework, no model. The caller supplies the cosine of the two embeddings (the
service has both vectors already: the query's and the one stored with the cached entry).
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache

from services.cache.lexicon import (
    ANTONYMS,
    BAD_WORDS,
    CONTRACTIONS,
    DATE_WORDS,
    DOWN_WORDS,
    FILLERS,
    FORBIDDEN_WORDS,
    FRACTION_WORDS,
    GOOD_WORDS,
    NEGATING_PREFIXES,
    NEGATIONS,
    NUMBER_WORDS,
    PARTICLES,
    PERMITTED_WORDS,
    REQUEST_WORDS,
    STOPWORDS,
    SUFFIXES,
    SYNONYMS,
    TASK_WORDS,
    TIME_UNITS,
    UP_WORDS,
    VERB_TASKS,
)
from services.shared.canonical import normalise_text

_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
# A leading minus only where it cannot be a dash between words or a subtraction: "f(-2)", " -3".
_NUMBER = re.compile(r"(?:(?<=[\s(\[=,])-)?\d+(?:[.,:/]\d+)*")
_CLOCK = re.compile(r"\d+(?:am|pm)")
_SENTENCE_START = re.compile(r"(?:^|[.!?]\s+|\n)\W*([^\W_]+)")


#: Knots of the piecewise-linear cosine terms: a linear model can then punish a low similarity
#: far harder than it rewards a high one.
COSINE_KNOTS = (0.7, 0.8, 0.9)

FEATURE_NAMES: tuple[str, ...] = (
    "cosine",
    *(f"cosine_below_{k}" for k in COSINE_KNOTS),
    "negation_mismatch",
    "antonym",
    "direction_swap",
    "polarity_mismatch",
    "number_mismatch",
    "date_mismatch",
    "unit_mismatch",
    "entity_mismatch",
    "jaccard",
    "fuzzy_jaccard",
    "bigram_jaccard",
    "reordered",
    "order_swaps",
    "unmatched_content",
    "typo_only",
    "minimal_edit",
    "length_ratio",
    # Interactions, so a linear model can weigh similarity differently for a rewording (little
    # wording shared: only the embedding can vouch for it) and for a near-copy.
    "reworded_below_0.8",
    "reworded_below_0.9",
    "reworded_below_0.95",
    "cosine_x_jaccard",
    "cosine_x_typo_only",
    "reworded_x_cosine",
    "typo_only_x_entity_mismatch",
    # Where the two differ, aligned (see :class:`Diff`): a near copy with one stretch changed is
    # the shape of a question about something else; many small changes, of a rewording.
    "diff_ratio",
    "diff_blocks",
    "single_change",
    "substitutions",
    "insertions",
    "changed_share",
    "log_length",
    "single_change_x_cosine",
    "diff_ratio_x_cosine",
    "single_change_x_diff_ratio",
    "flagged_x_diff_ratio",
    # What a short request asks done and what about (see :func:`task` and :func:`topic`): "write a
    # poem" / "write a story", "explain recursion" / "write a recursive function".
    "task_mismatch_x_short",
    "task_one_sided_x_short",
    "slot_swap_x_short",
    "explain_narrowed_x_short",
    "topic_changed",
    "topic_changed_x_short",
    "topic_swapped_x_short",
    "topic_added_x_short",
    "head_changed_x_short",
)


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


_SOURCE, _DESTINATION = frozenset({"from"}), frozenset({"to", "into", "onto"})
_DETERMINERS = frozenset({"the", "a", "an", "my", "our", "your", "their", "his", "her", "its", "this", "that"})


def _roles(t: Text) -> dict[str, str]:
    """The word naming where something goes from (after "from") or to (after "to", "into"), past
    one determiner: "from my savings" -> savings: source; "to move" -> move, which no other text
    names as a place, so it does no harm."""
    roles: dict[str, str] = {}
    for i, word in enumerate(t.tokens):
        role = "source" if word in _SOURCE else "destination" if word in _DESTINATION else None
        if role is None:
            continue
        j = i + 1 + (i + 1 < len(t.tokens) and t.tokens[i + 1] in _DETERMINERS)
        if j < len(t.tokens) and t.tokens[j] not in STOPWORDS:
            roles.setdefault(t.tokens[j], role)
    return roles


def _direction_swap(x: Text, y: Text) -> bool:
    """A word that is where something goes from in one question is where it goes to in the other
    ("from Hargreaves Lansdown to Vanguard" / "my Vanguard ISA over to Hargreaves Lansdown")."""
    rx, ry = _roles(x), _roles(y)
    return any(rx[w] != ry[w] for w in rx.keys() & ry.keys())


def _opposite_leaning(x: frozenset[str], y: frozenset[str], one: frozenset[str], other: frozenset[str]) -> bool:
    """One text leans only ``one`` way and the other only the ``other`` way."""
    lean_x, lean_y = (bool(x & one), bool(x & other)), (bool(y & one), bool(y & other))
    return {lean_x, lean_y} == {(True, False), (False, True)}


def _is_rotation(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """``b`` is ``a`` with a block moved to the front ("For a delayed train, how do I claim a
    refund?"): a clause moved whole, which keeps the meaning, unlike two words swapped."""
    if len(a) != len(b) or a == b:
        return False
    return f" {' '.join(b)} " in f" {' '.join(a + a)} "


def _order_swaps(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    """Share of pairs of content words, found once in each text, that come in the other order
    ("from MySQL to Postgres" / "from Postgres to MySQL"); a clause moved whole counts nothing."""
    if _is_rotation(_content(a), _content(b)):
        return 0.0
    count_a, count_b = Counter(a), Counter(b)
    shared = [t for t in a if count_a[t] == 1 and count_b[t] == 1 and t not in STOPWORDS and t not in FILLERS]
    position = {t: b.index(t) for t in shared}
    pairs = [(u, v) for i, u in enumerate(shared) for v in shared[i + 1:]]
    if not pairs:
        return 0.0
    return sum(position[u] > position[v] for u, v in pairs) / len(pairs)


def _content(tokens: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(t for t in tokens if t not in FILLERS)


def _bigrams(tokens: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(itertools.pairwise(tokens))


def _jaccard(a: set[tuple[str, str]], b: set[tuple[str, str]]) -> float:
    return len(a & b) / max(1, len(a | b))


def _is_content(word: str) -> bool:
    return word not in STOPWORDS and word not in REQUEST_WORDS


@dataclass(frozen=True)
class Diff:
    """Where two questions differ, aligned word by word (stems; fillers left out). A block is a
    stretch that differs and holds a content word that is not a typo of one across from it."""

    ratio: float  # share of the words in aligned, equal stretches
    blocks: int
    substitutions: int  # blocks with content words on both sides ("home" / "car" insurance)
    insertions: int  # blocks with content words on one side only ("without", "abelian")
    changed: int  # content words inside blocks, both sides
    opposed_particles: bool  # a stretch where "in" faces "out", "to" faces "from" ...


def diff(x: Text, y: Text) -> Diff:
    matcher = SequenceMatcher(None, x.stems, y.stems, autojunk=False)
    blocks = substitutions = insertions = changed = 0
    opposed = False
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        opposed = opposed or any(_is_opposite(u, v) for u in x.content[i1:i2] if u in PARTICLES
                                 for v in y.content[j1:j2] if v in PARTICLES)
        left = {w for w in x.content[i1:i2] if _is_content(w)}
        right = {w for w in y.content[j1:j2] if _is_content(w)}
        _, left, right = _typo_matches(left - right, right - left, x.entities | y.entities)
        if not left and not right:
            continue
        blocks += 1
        changed += len(left) + len(right)
        if left and right:
            substitutions += 1
        else:
            insertions += 1
    return Diff(matcher.ratio(), blocks, substitutions, insertions, changed, opposed)


#: Words of a question's frame rather than its topic: "how does X work", "what does X mean".
_FRAME_WORDS = frozenset({"work", "works", "mean", "means", "actually", "exactly", "something", "anything"})
#: How many topic words still make a request short: the task and topic features weigh fully up to
#: here and fade beyond (a long question says enough for the embedding to vouch for it).
SHORT_TOPIC = 2
_SUBJECTS = frozenset({("i",), ("we",)})
#: "What's the process / way / method for ...": a how-to put as a what-question.
_HOWTO_NOUNS = frozenset({"process", "procedure", "way", "method", "steps"})
_ARTICLES = frozenset({"a", "an", "some"})
#: Words that name a task only when they open a request ("plan a trip", "name my bakery"), being
#: nouns as often elsewhere ("the free plan", "the name on my ticket").
_OPENING_TASKS = {"plan": "plan", "name": "name"}
#: How a request opens before its task: "please can you help me plan ...".
_FRAMING = frozenset({"please", "can", "could", "would", "will", "you", "help", "me", "let", "us", "i", "want",
                      "to", "need", "like"}) | FILLERS


def _howto(tokens: tuple[str, ...], i: int) -> bool:
    """Whether a how-to frame starts at ``tokens[i]``: "how do I", "how to", "how I", "is there a
    way to", "what's the process for", "what do I (need to) do" ("how come" asks why)."""
    t, following = tokens[i], tokens[i + 1:i + 4]
    if t == "how":
        return bool(following) and following[0] != "come" and (
            following[0] == "to" or following[:1] in _SUBJECTS or following[1:2] in _SUBJECTS)
    if t == "way":
        return "to" in following[:2]
    if t == "what" and following[:1] == ("is",):
        return bool(_HOWTO_NOUNS & set(tokens[i + 2:i + 5]))
    return (t == "what" and following[:1] in (("do",), ("should",)) and following[1:2] in _SUBJECTS
            and following[2:3] in ((), ("do",), ("need",)))


def _explain(tokens: tuple[str, ...], i: int) -> str | None:
    """``explain`` where a question asking to be told about something starts at ``tokens[i]``
    ("what is", "how does", "tell me about"); ``solve`` for a sum ("what's 15% of 200")."""
    t, following = tokens[i], tokens[i + 1:i + 2]
    if t == "what" and following == ("is",) and sum(any(c.isdigit() for c in w) for w in tokens[i + 2:i + 6]) >= 2:
        return "solve"
    if t in ("what", "how") and following and following[0] in ("is", "are", "does", "do", "was"):
        return "explain"
    return "explain" if t == "tell" and "about" in tokens[i + 1:i + 4] else None


@lru_cache(maxsize=4096)
def task(tokens: tuple[str, ...]) -> str | None:
    """What a request asks done (a group of :data:`~services.cache.lexicon.TASK_WORDS`), or None,
    from the first of: a how-to frame ("how do I", "what's the process for": the steps, whatever
    the verb); a verb naming a task ("write", "fix", "translate" ...); "plan" or "name" opening the
    request; "give me a ..." (``create``) or "help me with" (``assist``); a recommendation ("best",
    "suggest", "which ... should"); "steps", "tips"; "what is / how does / tell me about"."""
    tokens = tuple(w for t in tokens for w in (("what", "is") if t == "whats" else (t,)))
    if any(_howto(tokens, i) for i in range(len(tokens))):
        return "howto"
    named = [TASK_WORDS[t] for t in tokens if t in TASK_WORDS]
    verbs = [n for n in named if n in VERB_TASKS]
    if verbs:
        return verbs[0]
    opening = next((t for t in tokens if t not in _FRAMING), None)
    if opening in _OPENING_TASKS:
        return _OPENING_TASKS[opening]
    for i, t in enumerate(tokens):
        following = tokens[i + 1:i + 3]
        if t in ("give", "tell") and following[:1] == ("me",) and following[1:] and following[1] in _ARTICLES:
            return "create"
        if t == "help" and "with" in following:
            return "assist"
    if "recommend" in named or tokens[:1] == ("should",) or (
            tokens[:1] in (("which",), ("what",)) and "should" in tokens[1:4]):
        return "recommend"
    if "howto" in named:
        return "howto"
    return next((e for i in range(len(tokens)) if (e := _explain(tokens, i))), None) or (
        "explain" if "explain" in named else None)


def topic(t: Text) -> tuple[str, ...]:
    """The words a request is about: its content words without the task, the request's framing,
    fillers and function words ("write a poem about the sea" -> poem, sea)."""
    return tuple(w for w in t.content if _is_content(w) and w not in TASK_WORDS and w not in _FRAME_WORDS)


def _task_features(x: Text, y: Text, d: Diff) -> list[float]:
    task_x, task_y = task(x.tokens), task(y.tokens)
    topic_x, topic_y = topic(x), topic(y)
    short = min(1.0, SHORT_TOPIC / max(1, len(topic_x), len(topic_y)))
    set_x, set_y = set(topic_x), set(topic_y)
    _, left, right = _typo_matches(set_x - set_y, set_y - set_x, x.entities | y.entities)
    changed = (len(left) + len(right)) / max(1, len(set_x | set_y))
    heads = [t[-1] for t in (topic_x, topic_y) if t]
    head_changed = float(len(heads) == 2 and heads[0] != heads[1] and not is_typo(heads[0], heads[1]))
    mismatch = float(task_x is not None and task_y is not None and task_x != task_y)
    return [
        mismatch * short,
        float((task_x is None) != (task_y is None)) * short,
        # The same request with one word swapped or added: "write a poem" / "write a story".
        float(d.blocks == 1 and d.substitutions == 1) * d.ratio * short,
        # "how does X work" / "what are the risks of X": an explanation of one side of it.
        float(task_x == task_y == "explain" and bool(left) != bool(right)) * short,
        changed,
        changed * short,
        float(bool(left) and bool(right)) * short,
        float(bool(left) != bool(right)) * short,
        head_changed * short,
    ]


def pair_features(a: str, b: str, cosine: float) -> list[float]:
    """The feature vector of a pair, in :data:`FEATURE_NAMES` order."""
    x, y = analyse(a), analyse(b)
    words_x, words_y = x.words - FILLERS, y.words - FILLERS
    only_x, only_y = words_x - words_y, words_y - words_x
    union = len(words_x | words_y) or 1
    jaccard = len(words_x & words_y) / union
    typos, left, right = _typo_matches(only_x, set(only_y), x.entities | y.entities)
    fuzzy_jaccard = (len(words_x & words_y) + typos) / max(1, union - typos)
    unmatched_content = len((left | right) - STOPWORDS - REQUEST_WORDS)
    d = diff(x, y)
    # "opt in" / "opt out": opposite particles only count facing each other in a near copy; in
    # a rewording "to" and "from" come and go freely.
    antonym = d.opposed_particles or any(
        _is_opposite(u, v) for u in only_x - PARTICLES for v in only_y - PARTICLES)
    entities_x = {e for e in x.entities if not _entity_in(e, y)}
    entities_y = {e for e in y.entities if not _entity_in(e, x)}
    lengths = sorted((len(x.tokens), len(y.tokens)))
    typo_only = float(not left and not right)
    entity_mismatch = float(bool(entities_x or entities_y))
    reworded = 1.0 - fuzzy_jaccard
    negation = float((x.negations > 0) != (y.negations > 0) or abs(x.negations - y.negations) == 1)
    # "1" alone is no difference: "a week" / "1 week", "one last tree" / "1 final tree".
    numbers, dates = float(bool((x.numbers ^ y.numbers) - {"1"})), float(x.dates != y.dates)
    polarity = float(_opposite_leaning(x.words, y.words, UP_WORDS, DOWN_WORDS)
                     or _opposite_leaning(x.words, y.words, GOOD_WORDS, BAD_WORDS)
                     or _opposite_leaning(x.words, y.words, PERMITTED_WORDS, FORBIDDEN_WORDS))
    return [
        float(cosine),
        *(max(0.0, k - float(cosine)) for k in COSINE_KNOTS),
        negation,
        float(antonym),
        float(_direction_swap(x, y)),
        polarity,
        numbers,
        dates,
        float(x.units != y.units),
        entity_mismatch,
        jaccard,
        fuzzy_jaccard,
        _jaccard(_bigrams(_content(x.tokens)), _bigrams(_content(y.tokens))),
        # The same words in another order: "from savings to current" / "from current to savings".
        float(words_x == words_y and _content(x.tokens) != _content(y.tokens)
              and not _is_rotation(_content(x.tokens), _content(y.tokens))),
        _order_swaps(x.tokens, y.tokens),
        float(min(unmatched_content, 5)),
        typo_only,
        # High overlap yet a content word that is not a typo: the shape of a one-word swap.
        fuzzy_jaccard * float(unmatched_content > 0),
        lengths[0] / max(1, lengths[1]),
        reworded * max(0.0, 0.8 - cosine),
        reworded * max(0.0, 0.9 - cosine),
        reworded * max(0.0, 0.95 - cosine),
        cosine * jaccard,
        cosine * typo_only,
        reworded * cosine,
        typo_only * entity_mismatch,
        *_diff_features(x, y, d, cosine, flagged=max(
            negation, float(antonym), polarity, numbers, dates, entity_mismatch)),
        *_task_features(x, y, d),
    ]


def _diff_features(x: Text, y: Text, d: Diff, cosine: float, *, flagged: float) -> list[float]:
    content = sum(1 for w in x.content if _is_content(w)) + sum(1 for w in y.content if _is_content(w))
    single = float(d.blocks == 1)
    return [
        d.ratio,
        float(min(d.blocks, 6)),
        single,
        float(min(d.substitutions, 4)),
        float(min(d.insertions, 4)),
        d.changed / max(1, content),
        math.log1p(content / 2),
        single * cosine,
        d.ratio * cosine,
        single * d.ratio,
        # A near copy with a number, a date, a name or the polarity changed: the classic wrong hit.
        flagged * d.ratio,
    ]
