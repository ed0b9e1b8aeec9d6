"""From a raw request body to a stream of replies: validation, routing, limits, envelope.

Shared by the HTTP and WebSocket front ends so both behave the same.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from opentelemetry import trace
from pydantic import ValidationError

from contracts.subjects import CLASSIFIER_STAGE, Priority, reply_subject
from contracts.v1 import Accepted, CacheControl, CacheNote, ChatRequest, Chunk, Final, Route, TaskEnvelope
from services.ingress.cache_control import default as cache_defaults
from services.ingress.dispatch import Dispatcher
from services.ingress.exact_cache import ExactCache
from services.ingress.fields import refuse_unhonoured
from services.ingress.observe import Observation
from services.ingress.settings import IngressSettings
from services.ingress.tenants import Caller, Gate, TenantRouting
from services.shared.broker import is_connected
from services.shared.errors import BadRequest, NotFound
from services.shared.tiers import TiersFile
from services.shared.validation import problems

#: The request header that keeps a routed request at or above a tier.
MIN_TIER_HEADER = "X-Skinflint-Min-Tier"


def new_request_id() -> str:
    return uuid.uuid4().hex


def describe_validation_error(exc: ValidationError) -> BadRequest:
    """The first problem, naming the field by its dotted path (``messages.0.role``)."""
    found = problems(exc)
    path, reason = found[0]
    more = f" (and {len(found) - 1} more problems)" if len(found) > 1 else ""
    return BadRequest(f"{path or 'body'}: {reason}{more}", param=path or None)


def parse_chat_request(data: Any) -> ChatRequest:
    """Validate a decoded JSON body (dict) into a ``ChatRequest`` or raise a 400 naming the field,
    including any field skinflint would not honour (``services.ingress.fields``)."""
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    refuse_unhonoured(data)
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        raise describe_validation_error(exc) from exc


def decode_json(raw: bytes) -> Any:
    if not raw.strip():
        raise BadRequest("the request body is empty; send a JSON chat completion request")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc


def unstreamed(text: str, streamed: list[str]) -> str:
    """The part of a whole answer ``text`` that its chunks (``streamed``) did not carry: all of
    it when nothing was streamed, nothing when the chunks already said it all."""
    sent = "".join(streamed)
    return text[len(sent):] if text.startswith(sent) else ""


def route_request(tiers: TiersFile, pipeline: list[str], req: ChatRequest, routing_of_tenant: TenantRouting,
                  min_tier: str | None = None) -> Route:
    """Where ``req`` goes: its named model's tier, or (``auto``, or a tenant that routes every
    request) the classifier's pick, with the default tier as the counterfactual and the answer
    when the classifier is off or down. Chat (ingress) and batch items (the batch service) alike."""
    routing = tiers.routing
    auto = routing is not None and req.model == routing.auto_model
    tier = routing.default_tier if auto and routing is not None else tiers.tier_of(req.model)
    if tier is None:
        known = ", ".join(sorted(tiers.public_models()))
        raise NotFound(f"the model {req.model!r} does not exist; available: {known}", param="model")
    classifier_on = routing is not None and CLASSIFIER_STAGE in pipeline
    routed = classifier_on and (routing_of_tenant.mode == "all" or (auto and routing_of_tenant.mode != "off"))
    if min_tier is not None:
        _check_min_tier(tiers, req.model, tier, min_tier, routed)
    return Route(model=req.model, tier=tier, counterfactual_tier=tier, routed=routed,
                 min_tier=min_tier if routed else None, tenant_class=routing_of_tenant.tenant_class)


def _check_min_tier(tiers: TiersFile, model: str, tier: str, min_tier: str, routed: bool) -> None:
    routing = tiers.routing
    ranked = [] if routing is None else [routing.weak, routing.strong]
    if min_tier not in ranked:
        raise BadRequest(f"{MIN_TIER_HEADER}: {min_tier!r} is not a routed tier "
                         f"({', '.join(ranked) or 'this deployment does not route'})", param=MIN_TIER_HEADER)
    if not routed and tier in ranked and ranked.index(tier) < ranked.index(min_tier):
        raise BadRequest(f"{MIN_TIER_HEADER}: the model {model!r} is tier {tier!r}, below {min_tier!r}; "
                         f"ask for a model of that tier, or for {routing.auto_model!r}"  # type: ignore[union-attr]
                         , param=MIN_TIER_HEADER)


async def _only(reply: Final) -> AsyncGenerator[Final, None]:
    yield reply


class Gateway:
    def __init__(self, settings: IngressSettings, gate: Gate, dispatcher: Dispatcher, tiers: TiersFile,
                 exact_cache: ExactCache | None = None) -> None:
        self.settings = settings
        self.tiers = tiers
        self.gate = gate
        self.dispatcher = dispatcher
        #: Answers exact cache hits without the hop to the cache stage (None: the stage does).
        self.exact_cache = exact_cache

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when connected to the bus with at least one live worker (from heartbeats)."""
        connected = is_connected(self.dispatcher.broker)
        workers = self.dispatcher.workers.live()
        return connected and bool(workers), {"bus": connected, "workers": [
            {"id": w.worker_id, "tier": w.tier, "inflight": w.inflight_interactive + w.inflight_bulk,
             "slots": w.slots} for w in workers]}

    def route(self, req: ChatRequest, caller: Caller, min_tier: str | None = None) -> Route:
        """Where ``req`` goes (``route_request``); ``min_tier``: X-Skinflint-Min-Tier."""
        return route_request(self.tiers, self.settings.pipeline, req, caller.routing, min_tier)

    def _model_of(self, tier: str) -> str | None:
        config = self.tiers.tiers.get(tier)
        return config.model if config is not None else None

    def envelope(self, caller: Caller, req: ChatRequest, route: Route, request_id: str,
                 received_at: float, cache_control: CacheControl | None = None) -> TaskEnvelope:
        return TaskEnvelope(
            request_id=request_id,
            tenant=caller.tenant,
            api_key_id=caller.key_id,
            priority=Priority.INTERACTIVE,
            request=req,
            route=route,
            reply_subject=reply_subject(self.dispatcher.instance_id, request_id),
            # A named model passes straight through: the classifier is visited only to decide.
            itinerary=[s for s in self.settings.pipeline if s != CLASSIFIER_STAGE or route.routed],
            deadline_at=received_at + self.settings.request_timeout_s,
            received_at=received_at,
            optional=list(self.settings.optional_stages),
            cache_control=cache_control or cache_defaults(caller.cache),
        )

    async def answer(self, caller: Caller, req: ChatRequest, request_id: str,
                     received_at: float | None = None, observation: Observation | None = None,
                     cache_control: CacheControl | None = None,
                     min_tier: str | None = None) -> AsyncGenerator[Chunk | Final, None]:
        """Admit the request against the caller's limits and yield its replies.

        Raises before yielding anything for errors known up front (404, 429, 503), so a
        streaming front end can still answer with a proper status code. ``observation`` learns
        the tenant, the tier, what the cache did (before any text) and the first token; the front
        end finishes it. ``cache_control``: from the request's headers (default: the tenant's).
        """
        span = trace.get_current_span()
        span.set_attribute("sf.request_id", request_id)
        span.set_attribute("sf.tenant", caller.tenant)
        if observation is not None:
            observation.tenant = caller.tenant
        route = self.route(req, caller, min_tier)
        span.set_attribute("sf.tier", route.tier)
        span.set_attribute("sf.route.routed", route.routed)
        if observation is not None:
            observation.tier = route.tier
        self.gate.admit(caller)
        try:
            env = self.envelope(caller, req, route, request_id, received_at or time.time(), cache_control)
            cached = None
            if self.exact_cache is not None:
                cached, env = await self.exact_cache.answer(env)
            source = _only(cached) if cached is not None else \
                self.dispatcher.replies(env, self.settings.request_timeout_s)
            # aclosing: when our consumer stops early, the dispatcher's clean-up runs now, not at GC.
            streamed: list[str] = []
            async with contextlib.aclosing(source) as replies:
                async for reply in replies:
                    if isinstance(reply, CacheNote):
                        _noted(reply, span, observation)
                        continue
                    if isinstance(reply, Accepted | Final) and reply.tier is not None:
                        span.set_attribute("sf.tier", reply.tier)
                        if observation is not None:
                            observation.tier = reply.tier
                            observation.model = reply.model or self._model_of(reply.tier)
                    if isinstance(reply, Accepted):
                        continue
                    if isinstance(reply, Final) and reply.cache is not None:
                        _noted(reply.cache, span, observation)
                    if isinstance(reply, Chunk):
                        streamed.append(reply.delta)
                    elif req.stream and (rest := unstreamed(reply.text, streamed)):
                        # A stage that answers whole (a cached answer, a direct one) on a streaming
                        # request: its text still reaches the client as stream content.
                        streamed.append(rest)
                        if observation is not None:
                            observation.first_token()
                        yield Chunk(request_id=request_id, seq=len(streamed) - 1, delta=rest)
                    if observation is not None and isinstance(reply, Chunk):
                        observation.first_token()
                    yield reply
        finally:
            self.gate.release(caller)


def _noted(note: CacheNote, span: trace.Span, observation: Observation | None) -> None:
    """What the cache did, on the trace and for the response's headers."""
    span.set_attribute("sf.cache.outcome", note.outcome.value)
    if note.similarity is not None:
        span.set_attribute("sf.cache.similarity", note.similarity)
    if note.shadow != "none":
        span.set_attribute("sf.cache.shadow", note.shadow)
    if note.reason:
        span.set_attribute("sf.cache.reason", note.reason)
    if observation is not None:
        observation.cache = note
