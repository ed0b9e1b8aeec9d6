"""The mixes a router is measured on: the rows as built, or re-weighted to look like production traffic.

Why. The router data set (``dataset.py``) is about half hard benchmark items (GSM8K, MMLU, GPQA,
HumanEval, AIME) by construction, so that a router sees enough of each kind to learn it. Traffic
a router is deployed on is not like that: skinflint's own premise is that most requests are
repeated, simple or not urgent, and published analyses of real chat logs agree. OpenAI's "How
People Use ChatGPT" (Chatterji, Cunningham, Deming et al., NBER working paper, September 2025) finds
practical guidance, seeking information and writing to make up about four in five
conversations, and computer programming 4.2% of messages. Logs of developer-facing chat sites
(LMSYS-Chat-1M, Zheng et al., 2023) hold more coding, but there too it is a minority. The
figures on the data set as built describe benchmark traffic; on it, ~55% of the held-out rows
gain from the strong tier, which caps every router's APGR near 0.72.

The traffic mix (:data:`TRAFFIC`) gives each *kind* of prompt a share of the calls:

==========  =====  ===========================================================================
kind        share  rows of that kind
==========  =====  ===========================================================================
chat        70%    fow-cache, vague, ShareGPT simple prompts, MT-Bench writing, roleplay,
                   humanities, STEM and extraction (and their paraphrases)
knowledge   10%    MMLU (and its paraphrases)
math        10%    GSM8K, AIME 2025, MT-Bench math and reasoning (and their paraphrases)
code         7%    HumanEval, MT-Bench coding (and their paraphrases)
science      3%    GPQA-diamond
==========  =====  ===========================================================================

These numbers are a choice, not a measurement: rounded from the studies above (chat, writing and
everyday questions ~70-80%; code above ChatGPT's 4.2% because an API gateway's tenants include
developers, below a developer-heavy log's; maths and academic questions a minority, hard science
rarer still). They were fixed before the routers' figures on this mix were measured, and were
not tuned to reach a target. A paraphrase counts as the kind of its original (it carries the
original's label, and a reworded GSM8K problem is still a maths problem); MT-Bench reasoning
(logic puzzles, labelled like maths) counts as maths.

How. Every row of a kind gets the same weight, ``share / rows of that kind``, scaled so that the
weights average 1 (a weighted count reads as rows): the metrics (``metrics.py``) take weighted
means, no row is dropped or duplicated and no label changes. A kind with no rows in the set
gives its share to the others in proportion. The traffic mix applies only to rows of the shipped
sources; a deployment's own file (other sources) is its traffic already and is measured as it
comes (:data:`BENCHMARK`, every weight 1): :meth:`Mix.weights` raises :class:`MixError` on it.

Plain logic, numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float64]

#: Share of calls per kind of prompt in the traffic mix (see the module docstring: a choice).
TRAFFIC_SHARES: Mapping[str, float] = {"chat": 0.70, "knowledge": 0.10, "math": 0.10, "code": 0.07, "science": 0.03}

_BY_SOURCE = {"fow-cache": "chat", "vague": "chat", "sharegpt": "chat", "mmlu": "knowledge", "gsm8k": "math",
              "aime2025": "math", "humaneval": "code", "gpqa": "science"}
_MTBENCH = {"math": "math", "reasoning": "math", "coding": "code"}  # other categories: chat


class Labelled(Protocol):
    """What a row needs to be given a kind (``dataset.Row`` has it)."""

    @property
    def source(self) -> str: ...

    @property
    def category(self) -> str: ...


class MixError(ValueError):
    """The rows cannot be re-weighted to a mix (some come from sources it does not know)."""


def kind_of(source: str, category: str) -> str | None:
    """The kind of a shipped (source, category); ``None`` for a source the mix does not know.
    A paraphrase (category ``"<source>/<category>"`` of its original) is its original's kind."""
    if source == "paraphrase-set":
        origin, _, origin_category = category.partition("/")
        return kind_of(origin, origin_category) if origin != "paraphrase-set" else None
    if source == "mtbench":
        return _MTBENCH.get(category, "chat")
    return _BY_SOURCE.get(source)


def weights_for(kinds: Sequence[str] | npt.NDArray[np.str_], shares: Mapping[str, float]) -> Vector:
    """Row weights that give each kind of ``kinds`` its share (renormalised over the kinds
    present), equal within a kind, averaging 1."""
    k = np.asarray(kinds)
    if len(k) == 0:
        return np.zeros(0)
    present, index, count = np.unique(k, return_inverse=True, return_counts=True)
    missing = [str(p) for p in present if str(p) not in shares]
    if missing:
        raise MixError(f"no share for kind(s) {missing}")
    share = np.array([shares[str(p)] for p in present], dtype=np.float64)
    if share.sum() <= 0:
        raise MixError("the kinds present have no share")
    per_row = share / share.sum() / count
    return np.asarray(per_row[index] * len(k), dtype=np.float64)


@dataclass(frozen=True)
class Mix:
    """A named way to weight rows; ``shares`` ``None``: the rows as they are (every weight 1)."""

    name: str
    shares: Mapping[str, float] | None
    description: str

    def kinds(self, rows: Sequence[Labelled]) -> npt.NDArray[np.str_]:
        """Each row's kind; raises :class:`MixError` naming the sources the mix does not know."""
        kinds = [kind_of(r.source, r.category) for r in rows]
        unknown = sorted({r.source for r, k in zip(rows, kinds, strict=True) if k is None})
        if unknown:
            raise MixError(f"the {self.name} mix knows the shipped data set's sources only, not {unknown}: "
                           "a deployment's own rows are its traffic already (use the benchmark mix)")
        return np.array(kinds, dtype=str)

    def weights(self, rows: Sequence[Labelled]) -> Vector:
        """One weight per row (see the module docstring); raises :class:`MixError` when it cannot."""
        if self.shares is None:
            return np.ones(len(rows))
        return weights_for(self.kinds(rows), self.shares)


BENCHMARK = Mix("benchmark", None, "the rows as they are, each counted once; the shipped set: about half hard "
                "benchmark items")
TRAFFIC = Mix("traffic", TRAFFIC_SHARES, "re-weighted to production-like shares: chat 70%, knowledge 10%, "
              "math 10%, code 7%, science 3%")
MIXES: dict[str, Mix] = {m.name: m for m in (TRAFFIC, BENCHMARK)}
