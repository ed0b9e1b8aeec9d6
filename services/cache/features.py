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
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from services.shared.canonical import normalise_text

_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
_NUMBER = re.compile(r"\d+(?:[.,:/]\d+)*")
_SENTENCE_START = re.compile(r"(?:^|[.!?]\s+|\n)\W*([^\W_]+)")

def _split(words: str) -> list[str]:
    return words.split()


#: Words that negate what follows, and contractions ending in n't.
NEGATIONS = frozenset({
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot",
    "nowhere", "non", "stop", "avoid", "refuse", "exclude", "excluding", "except", "unless",
})
#: Opposites that flip an answer; each pair is stored both ways.
_ANTONYM_PAIRS = (
    ("open", "closed"), ("open", "close"), ("on", "off"), ("in", "out"), ("include", "exclude"),
    ("includes", "excludes"), ("included", "excluded"), ("allowed", "banned"), ("allowed", "forbidden"),
    ("allowed", "prohibited"), ("increase", "decrease"),
    ("increased", "decreased"), ("increases", "decreases"), ("increase", "reduce"), ("raise", "lower"),
    ("more", "less"), ("more", "fewer"), ("most", "least"), ("max", "min"), ("maximum", "minimum"),
    ("over", "under"), ("above", "below"), ("before", "after"), ("early", "late"), ("earlier", "later"),
    ("first", "last"), ("start", "end"), ("start", "stop"), ("begin", "end"), ("add", "remove"),
    ("add", "delete"), ("enable", "disable"), ("activate", "deactivate"), ("join", "leave"),
    ("buy", "sell"), ("borrow", "lend"), ("deposit", "withdraw"), ("send", "receive"), ("import", "export"),
    ("upload", "download"), ("accept", "reject"), ("accept", "decline"), ("approve", "reject"),
    ("pass", "fail"), ("win", "lose"), ("benefits", "drawbacks"), ("advantages", "disadvantages"),
    ("pros", "cons"), ("safe", "dangerous"), ("legal", "illegal"), ("eat", "avoid"), ("can", "cannot"),
    ("should", "shouldn't"), ("with", "without"), ("to", "from"), ("into", "from"), ("higher", "lower"),
    ("high", "low"), ("best", "worst"), ("good", "bad"), ("better", "worse"),
    ("minimum", "maximum"), ("lowest", "highest"), ("longest", "shortest"), ("inside", "outside"),
    ("internal", "external"), ("public", "private"), ("full", "part"), ("permanent", "temporary"),
    ("adult", "child"), ("adults", "children"), ("entitled", "ineligible"),
    ("eligible", "ineligible"), ("qualify", "disqualify"), ("lock", "unlock"), ("mute", "unmute"),
    ("subscribe", "unsubscribe"), ("follow", "unfollow"), ("install", "uninstall"), ("pause", "resume"),
)
ANTONYMS = frozenset(_ANTONYM_PAIRS) | frozenset((b, a) for a, b in _ANTONYM_PAIRS)
#: Prefixes that turn a word into its opposite (safe/unsafe, like/dislike, members/non-members).
_NEGATING_PREFIXES = ("un", "dis", "in", "im", "il", "ir", "non", "anti", "de", "mis")

_NUMBER_WORDS = {
    w: str(i) for i, w in enumerate(_split(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty"))
} | {"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80",
     "ninety": "90", "hundred": "100", "thousand": "1000", "million": "1000000", "half": "0.5",
     "first": "1st", "third": "3rd", "fourth": "4th", "fifth": "5th", "once": "1x",
     "twice": "2x", "double": "2x", "triple": "3x", "dozen": "12"}
# Number words that are more often not numbers: "quick one", "wait a second", "single sign-on".
for _word in ("one", "second", "single", "couple"):
    _NUMBER_WORDS.pop(_word, None)
DATE_WORDS = frozenset(_split(
    "monday tuesday wednesday thursday friday saturday sunday mondays tuesdays wednesdays thursdays "
    "fridays saturdays sundays weekend weekends weekday weekdays today tomorrow yesterday tonight "
    "morning afternoon evening night daily weekly monthly yearly annually annual quarterly "
    "january february march april may june july august september october november december "
    "spring summer autumn fall winter christmas easter morning noon midnight am pm "
    "day days week weeks month months year years hour hours minute minutes"))

#: Short function words: a rewording changes them freely ("How do I" / "How can I").
STOPWORDS = frozenset(_split(
    "a an the i me my mine we our you your he she it its they them their this that these those "
    "is are was were be been being am do does did have has had will would shall should can could "
    "may might must need to of for in at by with about as from into onto up out and or but if so "
    "what which who whom whose when where why how there here please get got go going make any some "
    "just also too very much many really still ever s"))

#: Greetings, thanks and spoken fillers: they never change what is asked ("Hi, quick one: ...").
FILLERS = frozenset(_split(
    "hi hello hey hiya team please thanks thank cheers um uh er erm "
    "so like okay ok yeah well just wondering quick question one sorry bother silly many advance "
    "kind kindly regards"))
#: Contractions written out, so "What's" and "What is" are the same words.
_CONTRACTIONS = {
    "can't": ("can", "not"), "cannot": ("can", "not"), "won't": ("will", "not"), "shan't": ("shall", "not"),
    "what's": ("what", "is"), "where's": ("where", "is"), "who's": ("who", "is"), "how's": ("how", "is"),
    "when's": ("when", "is"), "why's": ("why", "is"), "it's": ("it", "is"), "that's": ("that", "is"),
    "there's": ("there", "is"), "here's": ("here", "is"), "let's": ("let", "us"),
}
_SUFFIXES = (("n't", "not"), ("'re", "are"), ("'ve", "have"), ("'ll", "will"), ("'d", "would"), ("'m", "am"))

#: Knots of the piecewise-linear cosine terms: a linear model can then punish a low similarity
#: far harder than it rewards a high one.
COSINE_KNOTS = (0.7, 0.8, 0.9)

FEATURE_NAMES: tuple[str, ...] = (
    "cosine",
    *(f"cosine_below_{k}" for k in COSINE_KNOTS),
    "negation_mismatch",
    "antonym",
    "number_mismatch",
    "date_mismatch",
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
)


@dataclass(frozen=True)
class Text:
    """One question, tokenised once."""

    tokens: tuple[str, ...]  # lower-case words, in order
    words: frozenset[str]
    negations: int
    numbers: frozenset[str]
    dates: frozenset[str]
    entities: frozenset[str]  # lower-cased capitalised words that do not open a sentence


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
    numbers = set(_NUMBER.findall(text)) | {_NUMBER_WORDS[t] for t in tokens if t in _NUMBER_WORDS}
    dates = {t for t in tokens if t in DATE_WORDS}
    return Text(tokens, frozenset(tokens), negations, frozenset(numbers), frozenset(dates), frozenset(entities))


def _expand(tokens: Iterable[str]) -> Iterable[str]:
    for t in tokens:
        if t in _CONTRACTIONS:
            yield from _CONTRACTIONS[t]
            continue
        for suffix, full in _SUFFIXES:
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


def stem(word: str) -> str:
    """A crude stem: the word without one common ending (waiting/wait, quotation/quote)."""
    word = _strip_possessive(word)
    for ending in _ENDINGS:
        if word.endswith(ending) and len(word) - len(ending) >= 3:
            return word[: -len(ending)]
    return word


def is_typo(a: str, b: str) -> bool:
    """Whether two different words are one misspelt as the other, or another form of it (plural,
    possessive, -ing, -ed ...): one edit for words up to five letters, two for longer ones;
    digits must match exactly and opposites (safe/unsafe) never are."""
    if any(c.isdigit() for c in a + b) or _is_opposite(a, b):
        return False
    a, b = _strip_possessive(a), _strip_possessive(b)
    if stem(a) in (b, stem(b)) or stem(b) == a:
        return True
    shorter = min(len(a), len(b))
    if shorter < 3:
        return False
    return edit_distance(a, b) <= (1 if shorter <= 5 else 2)


def _typo_matches(left: Iterable[str], right: set[str], names: frozenset[str] = frozenset()
                  ) -> tuple[int, set[str], set[str]]:
    """Greedily pair words of ``left`` with typo twins in ``right``; returns (pairs, unmatched
    left, unmatched right). A word that is a name (in ``names``) pairs only as a name would
    (:func:`_same_name`)."""
    free = set(right)
    unmatched_left: set[str] = set()
    pairs = 0
    for word in sorted(left):
        twin = next((w for w in sorted(free) if _twins(word, w, names)), None)
        if twin is None:
            unmatched_left.add(word)
        else:
            free.discard(twin)
            pairs += 1
    return pairs, unmatched_left, free


def _twins(a: str, b: str, names: frozenset[str]) -> bool:
    if _strip_possessive(a) in names or _strip_possessive(b) in names:
        return _same_name(_strip_possessive(a), _strip_possessive(b))
    return is_typo(a, b)


def _same_name(a: str, b: str) -> bool:
    """A misspelt name is the same name only when it is long and one edit away: short names a
    letter apart are other names (Mary / Mark), and so are longer ones two apart (Australia /
    Austria)."""
    return a == b or (min(len(a), len(b)) >= 6 and not any(c.isdigit() for c in a + b)
                      and edit_distance(a, b, limit=1) <= 1)


def _entity_in(entity: str, other: Text) -> bool:
    """Whether ``other`` names ``entity`` too (see :func:`_same_name`)."""
    return any(_same_name(entity, _strip_possessive(n)) for n in other.entities | other.words)


def _is_opposite(a: str, b: str) -> bool:
    if (a, b) in ANTONYMS:
        return True
    return min(len(a), len(b)) >= 3 and any(a == p + b or b == p + a for p in _NEGATING_PREFIXES)


def _is_rotation(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """``b`` is ``a`` with a block moved to the front ("For a delayed train, how do I claim a
    refund?"): a clause moved whole, which keeps the meaning, unlike two words swapped."""
    return len(a) == len(b) and any(b == a[k:] + a[:k] for k in range(1, len(a)))


def _order_swaps(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    """Share of pairs of content words, found once in each text, that come in the other order
    ("from MySQL to Postgres" / "from Postgres to MySQL"); a clause moved whole counts nothing."""
    if _is_rotation(_content(a), _content(b)):
        return 0.0
    shared = [t for t in a if a.count(t) == 1 and b.count(t) == 1 and t not in STOPWORDS and t not in FILLERS]
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


def pair_features(a: str, b: str, cosine: float) -> list[float]:
    """The feature vector of a pair, in :data:`FEATURE_NAMES` order."""
    x, y = analyse(a), analyse(b)
    words_x, words_y = x.words - FILLERS, y.words - FILLERS
    only_x, only_y = words_x - words_y, words_y - words_x
    union = len(words_x | words_y) or 1
    jaccard = len(words_x & words_y) / union
    typos, left, right = _typo_matches(only_x, set(only_y), x.entities | y.entities)
    fuzzy_jaccard = (len(words_x & words_y) + typos) / max(1, union - typos)
    unmatched_content = len((left | right) - STOPWORDS)
    antonym = any(_is_opposite(u, v) for u in only_x for v in only_y)
    entities_x = {e for e in x.entities if not _entity_in(e, y)}
    entities_y = {e for e in y.entities if not _entity_in(e, x)}
    lengths = sorted((len(x.tokens), len(y.tokens)))
    typo_only = float(not left and not right)
    entity_mismatch = float(bool(entities_x or entities_y))
    reworded = 1.0 - fuzzy_jaccard
    return [
        float(cosine),
        *(max(0.0, k - float(cosine)) for k in COSINE_KNOTS),
        float((x.negations > 0) != (y.negations > 0) or abs(x.negations - y.negations) == 1),
        float(antonym),
        float(x.numbers != y.numbers),
        float(x.dates != y.dates),
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
    ]
