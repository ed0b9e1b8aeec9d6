"""What a short request asks done (:func:`task`: write, fix, explain ...) and what about
(:func:`topic`): "write a poem" / "write a story", "explain recursion" / "write a recursive function".
"""

from __future__ import annotations

from functools import lru_cache

from services.cache.lexicon import FILLERS, TASK_WORDS, VERB_TASKS
from services.cache.text import Text, _is_content

#: Words of a question's frame rather than its topic: "how does X work", "what does X mean".
_FRAME_WORDS = frozenset({"work", "works", "mean", "means", "actually", "exactly", "something", "anything"})
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
