"""Answering one task with a backend (the engine, or a provider): plain logic, no bus code.

``answer`` turns an envelope into replies (chunks when streaming, then a final answer or an
error) and exactly one usage event, whatever happens: finished, failed or aborted. A task the
cache handed on before deciding (``VerdictGate``) sends nothing until the cache's verdict, and
nothing at all when the cache served the client itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from contracts.subjects import INFER_STAGE, Priority
from contracts.v1 import (
    Accepted,
    CacheNote,
    CacheOutcome,
    CacheVerdict,
    Chunk,
    ErrorReply,
    Final,
    PathTimings,
    TaskEnvelope,
    TokenUsage,
    UsageEvent,
)
from services.shared import metrics
from services.shared.errors import SkinflintError
from services.shared.usage import cache_usage, route_usage
from services.worker.backend import Backend, WorkerIdentity
from services.worker.engine import EngineStep

log = logging.getLogger(__name__)


class ReplySink(Protocol):
    """Where the logic's output goes; the bus adapter implements it."""

    async def reply(self, env: TaskEnvelope, message: Accepted | Chunk | Final | ErrorReply) -> None: ...

    async def usage(self, event: UsageEvent) -> None:
        """Send the task's usage event. Returns once it is on its way ahead of any reply sent
        after it (interactive), or once it is stored (bulk: the task is acknowledged after)."""
        ...

    async def announce(self, env: TaskEnvelope, final: Final) -> None:
        """Offer a whole answer to the cache, after the reply (never raises)."""
        ...


class Superseded(Exception):
    """The cache served the client while the model was answering: the answer is dropped."""


@dataclass
class VerdictGate:
    """Holds a task's output until the cache's verdict (``env.cache_pending``).

    ``settle`` is called before anything would leave the worker (the first chunk, the final
    answer, an error) and waits for the verdict at most ``timeout_s``: a miss lets the answer
    out with the cache's note and query embedding (for a streaming request, an ``Accepted``
    carrying the note goes first, so ingress has it before the text); a served verdict raises
    ``Superseded``; no verdict in time lets it out with the cache recorded as skipped.
    """

    verdict: asyncio.Future[CacheVerdict]
    timeout_s: float
    worker_id: str
    settled: bool = False

    async def settle(self, env: TaskEnvelope, sink: ReplySink) -> TaskEnvelope:
        if self.settled:
            return env
        self.settled = True
        waited = time.monotonic()
        try:
            verdict = await asyncio.wait_for(asyncio.shield(self.verdict), self.timeout_s)
        except TimeoutError:
            metrics.CACHE_VERDICTS.labels("timeout").inc()
            log.warning("no cache verdict on %s within %.1f s; answering it as a miss", env.request_id,
                        self.timeout_s)
            note = CacheNote(outcome=CacheOutcome.SKIPPED,
                             reason=f"timeout: no verdict from the cache within {self.timeout_s:g} s")
            return env.model_copy(update={"cache": note, "cache_pending": False})
        metrics.CACHE_VERDICT_WAIT.observe(time.monotonic() - waited)
        if verdict.serve:
            metrics.CACHE_VERDICTS.labels("served").inc()
            raise Superseded(env.request_id)
        metrics.CACHE_VERDICTS.labels("released").inc()
        env = env.model_copy(update={"cache": verdict.note, "query_embedding": verdict.query_embedding,
                                     "cache_pending": False})
        if env.request.stream:
            await sink.reply(env, Accepted(request_id=env.request_id, stage=INFER_STAGE, instance=self.worker_id,
                                           cache=verdict.note))
        return env


def _usage(env: TaskEnvelope, who: WorkerIdentity, status: str, last: EngineStep | None,
           prompt_tokens: int, queue_s: float, engine_s: float, text: str | None = None) -> UsageEvent:
    return UsageEvent(
        request_id=env.request_id,
        tenant=env.tenant,
        api_key_id=env.api_key_id,
        model=who.model_name,
        tier=who.tier,
        priority=env.priority,
        status=status,  # type: ignore[arg-type]
        **_tokens(last, prompt_tokens).model_dump(),
        queue_seconds=queue_s,
        engine_seconds=engine_s,
        worker=who.worker_id,
        occurred_at=time.time(),
        job_id=env.job_id,
        **cache_usage(env.cache, text),
        **route_usage(env.route),
    )


def failure_reply(env: TaskEnvelope, where: str) -> ErrorReply:
    """The answer to a failure nobody foresaw: a 500 that names the request id (it is in the log)."""
    return ErrorReply(request_id=env.request_id, status=500, code="internal_error",
                      message=f"the worker failed while {where}; the error is logged with request id "
                              f"{env.request_id}")


#: Hands a task on to another tier instead of sending its last reply, returning why (None: send
#: it): the cascade (a weak answer that fails the check goes to the strong tier) and the tier's
#: fallback (its provider is down). Called only while nothing of the answer has left the worker.
HandOn = Callable[[TaskEnvelope, Final | ErrorReply], Awaitable[str | None]]


async def answer(env: TaskEnvelope, backend: Backend[Any], sink: ReplySink, who: WorkerIdentity,
                 queue_seconds: float = 0.0, gate: VerdictGate | None = None,
                 hand_on: HandOn | None = None) -> Final | ErrorReply | None:
    """Generate the answer to ``env`` with ``backend`` and report it. Returns what was sent as the
    last reply (None: the cache served the client, see ``VerdictGate``, or ``hand_on`` passed the
    task to another tier, which answers it and charges this attempt's tokens with its own;
    nothing was sent or charged here).

    Contract: whatever happens (a bad request, a template that fails to render, an engine or
    provider error, anything unexpected), the client gets exactly one last reply, a ``Final`` or
    an ``ErrorReply``, and accounting exactly one usage event, sent *before* that reply on the
    same connection (so a delivered answer is never left uncharged). Nothing but cancellation is
    raised. Cancellation (client gone, worker draining past its deadline) aborts the backend's
    request, still reports the tokens spent as an ``aborted`` usage event (not for a bulk task, which
    runs again and is charged then), and re-raises.
    """
    started = time.monotonic()
    prompt_tokens = 0
    last: EngineStep | None = None
    in_engine = False
    streamed = False  # part of the answer has reached the client
    reply: Final | ErrorReply
    try:
        job = backend.prepare(env, who)
        prompt_tokens = job.prompt_tokens
        timings = PathTimings(arrived_at=env.marks[-1].arrived_at if env.marks else None,
                              engine_started_at=time.time())
        parts: list[str] = []
        in_engine = True
        async with _closing(backend.stream(job)) as steps:
            async for step in steps:
                last = step
                if step.delta:
                    if env.request.stream:
                        if gate is not None:
                            env = await gate.settle(env, sink)
                        await sink.reply(env, Chunk(request_id=env.request_id, seq=len(parts), delta=step.delta))
                        streamed = True
                    parts.append(step.delta)
        timings.engine_finished_at = time.time()
        if gate is not None:
            env = await gate.settle(env, sink)
        reply = _final(env, who, "".join(parts), last, prompt_tokens, queue_seconds, time.monotonic() - started)
        reply.timings = timings
        status = "ok"
    except Superseded:
        if in_engine:
            await asyncio.shield(backend.abort(env.request_id))
        return None
    except asyncio.CancelledError:
        if in_engine:
            await asyncio.shield(backend.abort(env.request_id))
        if env.priority is not Priority.BULK:
            await asyncio.shield(_report(sink, env, who, "aborted", last, prompt_tokens if in_engine else 0,
                                         queue_seconds, started))
        # A bulk task stopped (preempted, the worker stopping) goes back to its queue and is charged
        # when it runs to the end: an "aborted" charge now would be its one charge (by request id).
        raise
    except SkinflintError as exc:
        reply, status = exc.to_reply(env.request_id), "error"
    except Exception:
        status = "error"
        if in_engine:
            log.exception("engine failed on request %s", env.request_id)
            reply = ErrorReply(
                request_id=env.request_id, status=500, code="engine_error",
                message=f"the model failed while answering; the error is logged with request id {env.request_id}",
            )
        else:
            log.exception("preparing request %s failed", env.request_id)
            reply = failure_reply(env, "preparing the prompt")
    if gate is not None:
        # A failure found before the verdict waits for it too: the cache may have answered.
        try:
            env = await gate.settle(env, sink)
        except Superseded:
            return None
    if hand_on is not None and not streamed:
        why = await hand_on(env, reply)
        if why is not None:
            log.info("request %s: handed on from tier %s (%s)", env.request_id, who.tier, why)
            return None
    # Usage first, then the reply, on the same connection: see the contract above.
    await asyncio.shield(_report(sink, env, who, status, last, prompt_tokens if in_engine else 0,
                                 queue_seconds, started, reply.text if isinstance(reply, Final) else None))
    if isinstance(reply, Final) and reply.timings is not None:
        reply.timings.sent_at = time.time()
    await sink.reply(env, reply)
    if isinstance(reply, Final) and env.cache is not None and env.cache.fill:
        # After the reply: the client never waits for the cache to learn its answer.
        await sink.announce(env, reply)
    return reply


@contextlib.asynccontextmanager
async def _closing(steps: AsyncIterator[EngineStep]) -> AsyncIterator[AsyncIterator[EngineStep]]:
    """``steps``, closed on the way out however the loop over it ends (an async generator left
    unclosed would hold its request until garbage collection)."""
    try:
        yield steps
    finally:
        aclose = getattr(steps, "aclose", None)
        if aclose is not None:
            await aclose()


async def _report(sink: ReplySink, env: TaskEnvelope, who: WorkerIdentity, status: str, last: EngineStep | None,
                  prompt_tokens: int, queue_seconds: float, started: float, text: str | None = None) -> None:
    """Send the one usage event of ``env``; a failure to send is logged, never raised over the reply."""
    event = _usage(env, who, status, last, prompt_tokens, queue_seconds, time.monotonic() - started, text)
    try:
        await sink.usage(event)
    except Exception:
        log.exception("usage event of %s could not be sent", env.request_id)


def _final(env: TaskEnvelope, who: WorkerIdentity, text: str, last: EngineStep | None, prompt_tokens: int,
           queue_seconds: float, engine_seconds: float) -> Final:
    return Final(
        request_id=env.request_id,
        text=text,
        finish_reason="length" if last is not None and last.finish_reason == "length" else "stop",
        usage=_tokens(last, prompt_tokens),
        model=who.model_name,
        tier=who.tier,
        served_by=who.worker_id,
        queue_seconds=queue_seconds,
        engine_seconds=engine_seconds,
        cache=env.cache,
    )


def _tokens(last: EngineStep | None, prompt_tokens: int) -> TokenUsage:
    """Token counts as the engine last reported them (the rendered prompt if it never answered)."""
    if last is None:
        return TokenUsage(prompt_tokens=prompt_tokens, completion_tokens=0)
    return TokenUsage(prompt_tokens=last.prompt_tokens, cached_prompt_tokens=last.cached_prompt_tokens,
                      completion_tokens=last.completion_tokens)
