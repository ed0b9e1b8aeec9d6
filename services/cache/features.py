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

The analysis of one question is :mod:`services.cache.text`; what a short request asks,
:mod:`services.cache.intent`.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass
from difflib import SequenceMatcher

from services.cache.intent import task, topic
from services.cache.lexicon import (
    BAD_WORDS,
    DOWN_WORDS,
    FILLERS,
    FORBIDDEN_WORDS,
    GOOD_WORDS,
    PARTICLES,
    PERMITTED_WORDS,
    REQUEST_WORDS,
    STOPWORDS,
    UP_WORDS,
)
from services.cache.text import (
    Text,
    _content,
    _entity_in,
    _is_content,
    _is_opposite,
    _typo_matches,
    analyse,
    is_typo,
)

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


def _bigrams(tokens: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(itertools.pairwise(tokens))


def _jaccard(a: set[tuple[str, str]], b: set[tuple[str, str]]) -> float:
    return len(a & b) / max(1, len(a | b))


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


#: How many topic words still make a request short: the task and topic features weigh fully up to
#: here and fade beyond (a long question says enough for the embedding to vouch for it).
SHORT_TOPIC = 2


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
