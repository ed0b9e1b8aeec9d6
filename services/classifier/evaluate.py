"""Evaluate routers on labelled data: ``python -m services.classifier.evaluate --data .models/router-data
--split test [--mix traffic|benchmark|both] [--png curve.png]`` (also ``skinflint router eval``).

Prints, for the learned policy (``.models/router.json``), its text-only fallback, the length
heuristic, a random router and the oracle (the data set's ceiling: each row's true gain), the
metrics of ``services/classifier/metrics.py``: APGR, CPT(50%), CPT(80%), and the strong-call share
and price at 95% of the strong tier's quality; then what the learned policy's threshold does on
this data: its default (calibrated at training), the threshold that reaches the target here, and
the share of each source it sends to the strong tier. ``--png`` draws quality against strong-call
share for every router, one panel per mix.

Two mixes of the same rows (``services/classifier/mix.py``): ``traffic``, the rows re-weighted so
that kinds of prompt have production-like shares (chat 70%, ...), what a deployment sees; and
``benchmark``, the rows as built (about half hard benchmark items). ``--mix both`` (the default)
prints one after the other. A deployment's own file is its traffic already: the traffic mix
applies to the shipped sources only, and ``both`` then shows the rows as they come.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.cache.embedding import DEFAULT_MODEL_DIR
from services.classifier import metrics
from services.classifier.baselines import LengthPolicy, RandomPolicy
from services.classifier.dataset import DEFAULT_DATA, Row, read_many
from services.classifier.embeddings import embed_prompts
from services.classifier.features import Query
from services.classifier.learned import DEFAULT_ARTIFACT, ArtifactError, LearnedPolicy
from services.classifier.mix import BENCHMARK, MIXES, MixError
from services.classifier.training import QUALITY_TARGET, embedding_cache

#: The pricebook's input price of the large tier over the small one (2.50 / 0.05 USD per Mtok).
DEFAULT_PRICE_RATIO = 50.0
Vector = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Report:
    name: str
    apgr: float
    cpt50: float
    cpt80: float
    at_target: metrics.CostAtQuality
    curve: metrics.Curve


def report(name: str, scores: Vector, weak: Vector, strong: Vector, *, weights: Vector | None = None,
           target: float = QUALITY_TARGET, price_ratio: float = DEFAULT_PRICE_RATIO) -> Report:
    c = metrics.curve(scores, weak, strong, weights)
    return Report(name, metrics.apgr(c), metrics.cpt(c, 0.5), metrics.cpt(c, 0.8),
                  metrics.cost_at_quality(c, target, price_ratio), c)


def mix_weights(rows: Sequence[Row], chosen: str) -> dict[str, Vector]:
    """The weights of each mix ``chosen`` names (``traffic``, ``benchmark`` or ``both``), in that
    order. ``both`` leaves the traffic mix out, with a note, for rows it does not know; asking for
    ``traffic`` alone then exits naming the sources."""
    out: dict[str, Vector] = {}
    for name in (("traffic", "benchmark") if chosen == "both" else (chosen,)):
        try:
            out[name] = MIXES[name].weights(rows)
        except MixError as e:
            if chosen != "both":
                raise SystemExit(str(e)) from None
            print(f"note: {e}; showing the rows as they come")
    return out


def queries(rows: Sequence[Row], embeddings: npt.NDArray[np.float32] | None) -> list[Query]:
    """One-message queries for the rows, with their embeddings when given."""
    if embeddings is None:
        return [Query.single(r.prompt) for r in rows]
    return [Query.single(r.prompt, e) for r, e in zip(rows, embeddings, strict=True)]


def all_scores(policy: LearnedPolicy, rows: Sequence[Row], embeddings: npt.NDArray[np.float32],
               seed: int = 0) -> dict[str, Vector]:
    """Each router's scores on ``rows``: learned, its text-only fallback, length, random, oracle."""
    with_emb, without = queries(rows, embeddings), queries(rows, None)
    weak, strong = (np.array([getattr(r, k) for r in rows]) for k in ("weak", "strong"))
    return {
        "learned": policy.score_many(with_emb),
        "learned, text only": policy.score_many(without),
        "length": LengthPolicy().score_many(without),
        "random": RandomPolicy(seed).score_many(without),
        "oracle (ceiling)": metrics.oracle_scores(weak, strong),
    }


def pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"


def table_rows(reports: Sequence[Report]) -> list[list[str]]:
    return [[r.name, f"{r.apgr:.3f}", pct(r.cpt50), pct(r.cpt80), pct(r.at_target.share),
             pct(r.at_target.cost_vs_strong)] for r in reports]


HEADERS = ["router", "APGR", "CPT(50%)", "CPT(80%)", "strong calls at target", "cost vs all-strong"]


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)


def by_source(rows: Sequence[Row], scores: Vector, threshold: float, traffic: Vector | None) -> list[list[str]]:
    """Per source: rows, its share of the traffic mix (when given), mean weak/strong label, and
    the share sent to the strong tier."""
    out = []
    for source in sorted({r.source for r in rows}):
        idx = [i for i, r in enumerate(rows) if r.source == source]
        share = [pct(float(traffic[idx].sum() / traffic.sum()))] if traffic is not None else []
        out.append([source, str(len(idx)), *share, f"{np.mean([rows[i].weak for i in idx]):.2f}",
                    f"{np.mean([rows[i].strong for i in idx]):.2f}", pct(float(np.mean(scores[idx] >= threshold)))])
    return out


def plot(path: Path, panels: Mapping[str, Sequence[Report]], *, target: float = QUALITY_TARGET,
         title: str = "") -> None:
    """Average quality against the share of strong calls, one line per router, one panel per mix
    (``panels``: mix name -> its reports)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 5.5), dpi=120, squeeze=False)
    for ax, (mix_name, reports) in zip(axes[0], panels.items(), strict=True):
        first = reports[0].curve
        for r in reports:
            style = ":" if r.name.startswith("oracle") else "-"
            ax.plot(100 * r.curve.cost, r.curve.quality, style, label=f"{r.name} (APGR {r.apgr:.3f})")
        ax.axhline(first.q_strong, color="grey", lw=0.8)
        ax.axhline(first.q_weak, color="grey", lw=0.8)
        ax.axhline(target * first.q_strong, color="red", lw=0.8, ls="--",
                   label=f"{target:.0%} of the strong tier's quality")
        ax.set_xlabel("calls sent to the strong tier (%)")
        ax.set_ylabel("average quality (expected, 0-1)")
        ax.set_xlim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title(f"{mix_name} mix: {MIXES[mix_name].description}" if mix_name in MIXES else mix_name,
                     fontsize=9, wrap=True)
    fig.suptitle(title or "cost / quality of routers")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def evaluate(rows: Sequence[Row], scores: Mapping[str, Vector], *, weights: Vector | None = None,
             target: float = QUALITY_TARGET, price_ratio: float = DEFAULT_PRICE_RATIO) -> list[Report]:
    """Every router's report on ``rows``, each row counted ``weights[i]`` times (``None``: once)."""
    weak, strong = (np.array([getattr(r, k) for r in rows]) for k in ("weak", "strong"))
    return [report(name, s, weak, strong, weights=weights, target=target, price_ratio=price_ratio)
            for name, s in scores.items()]


def select(rows: Sequence[Row], split: str) -> list[Row]:
    chosen = [r for r in rows if split == "all" or r.split == split]
    if not chosen:
        raise SystemExit(f"no rows in split {split!r}")
    return chosen


def eval_main(argv: Sequence[str] | None = None) -> int:
    """Print the evaluation; ``argv``: ``--data PATH...``, ``--split``, ``--mix``, ``--router``,
    ``--png``, ``--target``, ``--price-ratio``, ``--embedder`` (``--help`` lists them). Returns the
    exit code."""
    parser = argparse.ArgumentParser(prog="python -m services.classifier.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", default=[DEFAULT_DATA])
    parser.add_argument("--split", choices=("test", "train", "all"), default="test")
    parser.add_argument("--mix", choices=("traffic", "benchmark", "both"), default="both",
                        help="weight the rows to production-like shares, take them as built, or both")
    parser.add_argument("--router", type=Path, default=DEFAULT_ARTIFACT, help="the learned policy's artifact")
    parser.add_argument("--png", type=Path, default=None, help="draw the cost/quality curves here")
    parser.add_argument("--target", type=float, default=QUALITY_TARGET, help="share of the strong tier's quality")
    parser.add_argument("--price-ratio", type=float, default=DEFAULT_PRICE_RATIO,
                        help="price of a strong call over a weak one (default: the pricebook's input prices)")
    parser.add_argument("--embedder", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--seed", type=int, default=0, help="the random router's seed")
    args = parser.parse_args(argv)
    try:
        policy = LearnedPolicy.load(args.router)
    except ArtifactError as e:
        raise SystemExit(str(e)) from None
    all_rows, digest = read_many(args.data)
    rows = select(all_rows, args.split)
    if digest == policy.trained_on.get("sha256") and args.split != "test":
        print("note: the policy was trained on this data's train split; figures on it are in-sample")
    weights = mix_weights(rows, args.mix) or {BENCHMARK.name: BENCHMARK.weights(rows)}
    emb = embed_prompts([r.prompt for r in rows], embedder_dir=args.embedder, cache=embedding_cache(args.data))
    scores = all_scores(policy, rows, emb, seed=args.seed)
    print(f"{len(rows)} rows ({args.split}) from {' + '.join(map(str, args.data))}; target {args.target:.0%} of "
          f"the strong tier's quality; a strong call costs {args.price_ratio:g} weak ones")
    panels = {}
    for name, w in weights.items():
        panels[name] = reports = evaluate(rows, scores, weights=w, target=args.target, price_ratio=args.price_ratio)
        c = reports[0].curve
        print(f"\n{name} mix ({MIXES[name].description}): average quality weak {c.q_weak:.3f}, strong "
              f"{c.q_strong:.3f}; target {args.target * c.q_strong:.3f}")
        print_table(f"routers, {name} mix", HEADERS, table_rows(reports))
        print_knob(rows, scores["learned"], policy.default_threshold, args.target, w)
    print_table(f"learned at threshold {policy.default_threshold:.3f}, by source",
                ["source", "rows", *(["traffic share"] if "traffic" in weights else []), "weak", "strong",
                 "sent strong"], by_source(rows, scores["learned"], policy.default_threshold, weights.get("traffic")))
    if args.png:
        plot(args.png, panels, target=args.target, title=f"routers on {args.split} ({len(rows)} rows)")
        print(f"curve: {args.png}")
    return 0


def knob(rows: Sequence[Row], scores: Vector, threshold: float, target: float,
         weights: Vector | None = None) -> dict[str, Any]:
    """What the default threshold gives on these rows (each counted ``weights[i]`` times), and the
    threshold that reaches ``target`` here."""
    weak, strong = (np.array([getattr(r, k) for r in rows]) for k in ("weak", "strong"))
    share, quality = metrics.at_threshold(scores, weak, strong, threshold, weights)
    c = metrics.curve(scores, weak, strong, weights)
    here = metrics.threshold_for_quality(c, target)
    return {"default_threshold": threshold, "default_share": share, "default_quality": quality,
            "default_of_strong": quality / c.q_strong, "threshold_for_target": here.threshold,
            "share_for_target": here.share, "quality_for_target": here.quality}


def print_knob(rows: Sequence[Row], scores: Vector, threshold: float, target: float,
               weights: Vector | None = None) -> None:
    k = knob(rows, scores, threshold, target, weights)
    print(f"learned, default threshold {threshold:.3f}: {pct(k['default_share'])} strong calls, quality "
          f"{k['default_quality']:.3f} ({k['default_of_strong']:.1%} of strong); on this data the threshold reaching "
          f"{target:.0%} is {k['threshold_for_target']:.3f} ({pct(k['share_for_target'])} strong calls)")


if __name__ == "__main__":
    import sys

    sys.exit(eval_main())
