"""The engine's own saturated output tokens/s: vLLM's engine driven directly, as skinflint's worker builds it.

The baseline of ``bench/priority.py``'s throughput figure. It runs in a process of its own
(``python -m bench.priority_engine``, started by ``EngineBaseline``), so its engine and the
worker's are separate processes, loaded in turn and never at once, as they would be on two
machines. The process builds ``services.worker.engine.VllmEngine`` from ``WorkerSettings`` read from
the same ``SF_*`` environment the worker gets (``targets.EngineSettings.skinflint_env``), applies
the worker's scheduler slice and keeps its own threads off the engine's cores (as
``services.shared.runner`` does for the worker), renders every prompt with the engine's
``render`` (the worker's path) and streams it with the worker's bulk priority and sampling
(temperature 0, ``max_tokens``). No HTTP, no NATS: what it measures is the engine's ceiling.

Protocol: one JSON object a line. The process writes ``{"ready": true}`` once its engine is up,
then for every ``{"n", "concurrency", "max_tokens", "label"}`` read on stdin runs ``n`` requests
from ``concurrency`` closed-loop clients over ``common.PROMPTS`` and writes ``{"finishes":
[[monotonic time, completion tokens], ...], "errors": [...]}``. It ends at the end of stdin.
vLLM's own output (and its engine processes') goes to stderr: the engine's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from services.stack import ROOT

try:  # `python -m bench.priority_engine` from the repo root
    from bench import common, targets
except ModuleNotFoundError:  # `python bench/priority_engine.py`: bench/ itself is on the path
    import common  # type: ignore[no-redef]
    import targets  # type: ignore[no-redef]


# --- the baseline process ---------------------------------------------------------------------

async def saturate(engine: Any, n: int, concurrency: int, max_tokens: int, label: str) -> dict[str, Any]:
    """``n`` requests through ``engine`` (a ``VllmEngine``), ``concurrency`` at a time: each client
    renders its next prompt and streams it to the end, as the worker does with a bulk task."""
    from contracts.subjects import Priority
    from contracts.v1 import ChatMessage
    from services.worker.backend import ENGINE_PRIORITY
    from services.worker.engine import GenerationParams

    counter = itertools.count()
    finishes: dict[int, tuple[float, int]] = {}
    errors: list[str] = []
    params = GenerationParams(max_tokens=max_tokens, temperature=0.0)

    async def client() -> None:
        while (i := next(counter)) < n:
            prompt = engine.render([ChatMessage(role="user", content=common.PROMPTS[i % len(common.PROMPTS)])])
            tokens = 0
            try:
                async for step in engine.stream(f"{label}-{i}", prompt, params, ENGINE_PRIORITY[Priority.BULK]):
                    tokens = step.completion_tokens
            except Exception as exc:  # counted and reported: the run goes on
                errors.append(f"{type(exc).__name__}: {exc}")
            finishes[i] = (time.monotonic(), tokens)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return {"finishes": [finishes[i] for i in range(n)], "errors": errors}


async def serve(commands: IO[str], replies: IO[str]) -> None:
    from services.shared import sched
    from services.worker.engine import VllmEngine
    from services.worker.settings import WorkerSettings

    settings = WorkerSettings()
    engine = VllmEngine(settings)
    sched.apply_request_path_slice(settings.sched_slice_us, "engine baseline")
    if settings.sched_keep_off_engine_cpus:
        sched.keep_off_engine_cpus("engine baseline", [os.getpid()], owners=[os.getpid()])
    loop = asyncio.get_running_loop()
    try:
        replies.write(json.dumps({"ready": True}) + "\n")
        replies.flush()
        while line := await loop.run_in_executor(None, commands.readline):
            cmd = json.loads(line)
            result = await saturate(engine, int(cmd["n"]), int(cmd["concurrency"]), int(cmd["max_tokens"]),
                                    str(cmd["label"]))
            replies.write(json.dumps(result) + "\n")
            replies.flush()
    finally:
        await engine.close()


def child_main() -> int:
    import logging

    # The protocol keeps the real stdout; everything else printed to stdout (vLLM logs there, and
    # so do its engine processes, which inherit the descriptor) goes to stderr, the engine's log.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(sys.stdin, replies))
    return 0


# --- the bench's side -------------------------------------------------------------------------

class EngineBaseline:
    """The baseline process, started with ``settings`` (the worker's engine settings) and driven
    one run at a time; its log is ``var_dir/engine.log``."""

    name = "engine"

    def __init__(self, var_dir: Path, settings: targets.EngineSettings) -> None:
        self.var_dir = var_dir
        self.settings = settings
        self.process: subprocess.Popen[str] | None = None

    def engine_log(self) -> Path:
        return self.var_dir / "engine.log"

    def start(self, timeout_s: float = 600) -> None:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.settings.skinflint_env(), "PYTHONUNBUFFERED": "1"}
        with open(self.engine_log(), "ab") as log_file:
            self.process = subprocess.Popen([sys.executable, "-m", "bench.priority_engine"], cwd=ROOT, env=env,
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
                                            text=True, start_new_session=True)
        reply = self._read(timeout_s)
        if not reply.get("ready"):
            raise RuntimeError(f"the engine baseline did not start: {reply}; see {self.engine_log()}")

    def _read(self, timeout_s: float) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"the engine baseline gave no answer within {timeout_s:.0f} s "
                               f"(exit code {self.process.poll()}); see {self.engine_log()}")
        return dict(json.loads(line))

    def run_blocking(self, n: int, concurrency: int, max_tokens: int, label: str) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps({"n": n, "concurrency": concurrency, "max_tokens": max_tokens,
                                             "label": label}) + "\n")
        self.process.stdin.flush()
        return self._read(120 + n * max_tokens * 0.05)

    async def run(self, n: int, concurrency: int, max_tokens: int, label: str) -> dict[str, Any]:
        """(finish time, completion tokens) of ``n`` requests, ``concurrency`` at a time, and the errors."""
        return await asyncio.to_thread(self.run_blocking, n, concurrency, max_tokens, label)

    def stop(self, timeout_s: float = 40) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None and proc.stdin is not None:
            try:
                proc.stdin.close()  # the end of its commands: it shuts its engine down and leaves
                proc.wait(timeout=timeout_s)
            except (OSError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


if __name__ == "__main__":
    sys.exit(child_main())
