"""Query embeddings for training and evaluating the router offline, as the service computes them.

:func:`embed_prompts` embeds with ``services.cache.embedding.Embedder`` (all-MiniLM-L6-v2 int8,
one text per run, as the cache stage does) and keeps the vectors in a cache file beside the data,
keyed by each text's sha256 and the model file's identity, so that training, evaluation and the
bench embed each prompt once. The cache is a convenience: deleting it only costs time.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from services.cache.embedding import DEFAULT_MODEL_DIR, DIM

CACHE_NAME = "embeddings.npz"


def _model_id(model_dir: Path) -> str:
    stat = (model_dir / "model.onnx").stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _read_cache(path: Path, model_id: str) -> dict[str, npt.NDArray[np.float32]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["model_id"]) != model_id:
                return {}
            return dict(zip(npz["keys"].tolist(), npz["vectors"], strict=True))
    except (OSError, KeyError, ValueError):
        return {}


def embed_prompts(prompts: Sequence[str], *, embedder_dir: Path = DEFAULT_MODEL_DIR, cache: Path | None = None,
                  progress: bool = False) -> npt.NDArray[np.float32]:
    """``(len(prompts), 384)`` unit vectors, in order. ``cache`` (a file) is read and extended."""
    model_id = _model_id(embedder_dir) if (embedder_dir / "model.onnx").exists() else "missing"
    known = _read_cache(cache, model_id) if cache else {}
    todo = sorted({p for p in prompts if _key(p) not in known})
    if todo:
        from services.cache.embedding import Embedder

        embedder = Embedder(embedder_dir)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="embedding", unit="prompt", file=sys.stderr)
        for start in range(0, len(todo), 64):
            chunk = todo[start:start + 64]
            known.update(zip(map(_key, chunk), embedder.embed(chunk), strict=True))
            if bar:
                bar.update(len(chunk))
        if bar:
            bar.close()
        if cache:
            keys = sorted(known)
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + ".partial.npz")
            np.savez(tmp, model_id=np.array(model_id), keys=np.array(keys),
                     vectors=np.stack([known[k] for k in keys]).astype(np.float32))
            tmp.rename(cache)
    if not prompts:
        return np.zeros((0, DIM), dtype=np.float32)
    return np.stack([known[_key(p)] for p in prompts]).astype(np.float32)
