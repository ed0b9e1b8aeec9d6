"""The OpenAI-compatible HTTP API (FastAPI): chat completions (JSON and SSE), models, usage."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Collection
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contracts.subjects import CACHE_PURGE_SUBJECT, USAGE_QUERY_SUBJECT
from contracts.v1 import CachePurge, CachePurged, ChatRequest, Chunk, Final, UsageQuery, UsageReport
from services.ingress import cache_control
from services.ingress import openai_format as fmt
from services.ingress.batch_api import BatchApi, batch_router
from services.ingress.body import read_body
from services.ingress.dispatch import phases_ms
from services.ingress.fields import published_schema
from services.ingress.gateway import (
    MIN_TIER_HEADER,
    Gateway,
    decode_json,
    new_request_id,
    parse_chat_request,
)
from services.ingress.observe import Observation
from services.ingress.ws import websocket_chat
from services.shared.errors import (
    BadRequest,
    NotFound,
    SkinflintError,
    Unavailable,
)
from services.shared.health import metrics
from services.shared.usage_table import render_table
from services.shared.validation import field_path

log = logging.getLogger(__name__)

ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "object", "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": "string"}}}},
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    for status, text in [(400, "Bad request (the field is named)"), (401, "Missing or invalid API key"),
                         (404, "Unknown model"), (413, "Body too large"), (429, "Over a limit"),
                         (503, "No worker, or all at capacity"), (504, "No answer in time")]
}


class RequestIdMiddleware:
    """Gives every request an id (``X-Request-Id`` on every response) and a start timestamp."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["t0"] = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


def error_response(err: SkinflintError) -> JSONResponse:
    # X-Request-Id itself is added to every response by RequestIdMiddleware (once).
    headers: dict[str, str] = {}
    retry_after = getattr(err, "retry_after", None)
    if retry_after is not None:
        headers["retry-after"] = str(max(1, round(retry_after)))
    return JSONResponse(fmt.error_body(err), status_code=err.status, headers=headers)


def create_http_app(gateway: Gateway, batch: BatchApi | None = None) -> FastAPI:
    """``batch``: the Batch API's stores, opened by the service at start (503s until then)."""
    settings = gateway.settings
    app = FastAPI(
        title="skinflint",
        version="1",
        description="OpenAI-compatible chat completions that cost less: cache, routing, batching.",
    )
    app.add_middleware(RequestIdMiddleware)

    @app.exception_handler(SkinflintError)
    async def _skinflint_error(request: Request, exc: SkinflintError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        loc = field_path(err["loc"])
        return error_response(BadRequest(f"{loc}: {err['msg']}", param=loc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "http_error"
        return error_response(SkinflintError(str(exc.detail), status=exc.status_code, code=code))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", None)
        log.exception("unexpected error on request %s", request_id)
        return error_response(SkinflintError(f"internal error; it is logged with request id {request_id}"))

    @app.post(
        "/v1/chat/completions",
        summary="Create a chat completion (OpenAI-compatible; SSE when stream is true)",
        responses=ERROR_RESPONSES,
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}
        }}},
    )
    async def chat_completions(request: Request) -> Any:
        observation = Observation(stream=False, started=request.state.t0)
        try:
            return await _chat_completion(request, observation)
        except SkinflintError as exc:
            observation.finish(exc.status)
            raise
        except BaseException:
            observation.finish(500)
            raise

    async def _chat_completion(request: Request, observation: Observation) -> Any:
        request_id: str = request.state.request_id
        caller = gateway.gate.authenticate(request.headers.get("authorization"))
        observation.tenant = caller.tenant
        reading = time.perf_counter()
        raw = await read_body(request, settings.max_body_bytes)
        # Waiting for the client to send its body is the client's time, not skinflint's.
        client_ms = (time.perf_counter() - reading) * 1000
        req = parse_chat_request(decode_json(raw))
        control = cache_control.from_headers(request.headers, caller.cache)
        observation.stream = req.stream
        replies = gateway.answer(caller, req, request_id, observation=observation, cache_control=control,
                                 min_tier=request.headers.get(MIN_TIER_HEADER) or None)
        created = fmt.now()
        if req.stream:
            first = await _first(replies)  # errors up to here become proper status codes
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                # The chunks name the model that answers (a routed request's pick), as the final one does.
                _sse(request_id, created, observation.model or req.model, first, replies, include_usage, observation),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no", "x-skinflint-tier": observation.tier,
                         **cache_control.response_headers(observation.cache)},
            )
        final = await _final_unless_client_leaves(request, replies)
        await replies.aclose()  # releases the tenant's slot now
        total_ms = (time.perf_counter() - request.state.t0) * 1000
        engine_ms = final.engine_seconds * 1000
        overhead_ms = max(0.0, total_ms - engine_ms - client_ms)
        # The phases start after the client's upload, as the overhead does.
        response_at = time.time()
        phases = phases_ms(final.timings, response_at - (total_ms - client_ms) / 1000, response_at)
        observation.finish(200, overhead_s=overhead_ms / 1000)
        return JSONResponse(fmt.completion(request_id, created, final), headers={
            "x-skinflint-engine-ms": f"{engine_ms:.3f}",
            "x-skinflint-overhead-ms": f"{overhead_ms:.3f}",
            "x-skinflint-phases-ms": ",".join(f"{name}={ms:.3f}" for name, ms in phases.items()),
            "x-skinflint-served-by": final.served_by,
            "x-skinflint-tier": final.tier,
            **cache_control.response_headers(final.cache),
        })

    @app.get("/v1/models", summary="List the models this deployment answers with")
    async def list_models(request: Request) -> dict[str, Any]:
        gateway.gate.authenticate(request.headers.get("authorization"))
        return {"object": "list", "data": [_model(name) for name in sorted(gateway.tiers.public_models())]}

    @app.get("/v1/models/{model}", summary="Describe one model", responses=ERROR_RESPONSES)
    async def get_model(request: Request, model: str) -> dict[str, Any]:
        gateway.gate.authenticate(request.headers.get("authorization"))
        if model not in gateway.tiers.public_models():
            raise NotFound(f"the model {model!r} does not exist", param="model")
        return _model(model)

    def _model(name: str) -> dict[str, Any]:
        """A model's listing: its tier, or for 'auto' the tiers it routes between."""
        tiers = gateway.tiers
        tier = tiers.tier_of(name)
        return {"id": name, "object": "model", "created": 0, "owned_by": "skinflint",
                "tier": tier if tier is not None else "auto", "description": tiers.public_models()[name]}

    @app.get("/v1/usage", summary="Usage and cost per tenant and tier", responses=ERROR_RESPONSES)
    async def usage(request: Request,
                    since: Annotated[float | None, Query(ge=0, le=1e11, description="Unix time")] = None,
                    tenant: Annotated[str | None, Query(max_length=200)] = None,
                    job_id: Annotated[str | None, Query(min_length=1, max_length=200,
                                                        description="Only this batch's items")] = None,
                    format: Annotated[str, Query(pattern="^(json|table)$")] = "json") -> Any:
        caller = gateway.gate.authenticate(request.headers.get("authorization"))
        if format not in ("json", "table"):
            raise BadRequest("format must be 'json' or 'table'", param="format")
        if tenant is not None and tenant != caller.tenant and not caller.admin:
            raise SkinflintError("only an admin key may read another tenant's usage", status=403,
                                 code="forbidden", param="tenant")
        # A job id narrows the query; the tenant scope still holds (another tenant's job reads as empty).
        query = UsageQuery(tenant=tenant if caller.admin else caller.tenant, since=since, job_id=job_id)
        try:
            msg = await gateway.dispatcher.broker.request(query, USAGE_QUERY_SUBJECT, timeout=5.0)
        except Exception as exc:
            raise Unavailable("the accounting service did not answer; is it running?") from exc
        report = UsageReport.model_validate_json(msg.body)
        if format == "table":
            return PlainTextResponse(render_table(report))
        return report.model_dump()

    @app.post("/v1/cache/purge", summary="Remove cached answers: your tenant's (by tag), or any (admin)",
              responses={**ERROR_RESPONSES, 403: {"description": "Another tenant's cache, without an admin key"},
                         404: {"description": "An admin named a tenant that is not configured"},
                         502: {"description": "The purge failed in the cache service"}},
              openapi_extra={"requestBody": {"required": False, "content": {"application/json": {"schema": {
                  "type": "object", "additionalProperties": False, "properties": {
                      "tag": {"type": "string", "minLength": 1}, "tenant": {"type": "string", "minLength": 1},
                      "all": {"type": "boolean"}}}}}}})
    async def purge_cache(request: Request) -> dict[str, Any]:
        caller = gateway.gate.authenticate(request.headers.get("authorization"))
        raw = await read_body(request, 64 * 1024)
        command = purge_command(decode_json(raw) if raw.strip() else {}, caller.tenant, caller.admin,
                                gateway.gate.tenant_names)
        try:
            msg = await gateway.dispatcher.broker.request(command, CACHE_PURGE_SUBJECT, timeout=30.0)
        except Exception as exc:
            raise Unavailable("the cache service did not answer; is it running?") from exc
        result = CachePurged.model_validate_json(msg.body)
        if not result.ok:
            raise SkinflintError(f"the cache purge failed: {result.error}", status=502, code="purge_failed")
        return {"purged": command.model_dump(), "exact_removed": result.exact_removed,
                "semantic_removed": result.semantic_removed}

    @app.get("/healthz", summary="Liveness", include_in_schema=True)
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    app.add_route("/metrics", metrics, include_in_schema=False)

    @app.get("/readyz", summary="Readiness: connected to the bus, with live workers")
    async def readyz() -> JSONResponse:
        ready, details = gateway.readiness()
        return JSONResponse({"ready": ready, **details}, status_code=200 if ready else 503)

    app.add_api_websocket_route("/v1/ws", websocket_chat(gateway))
    app.include_router(batch_router(gateway.gate, batch or BatchApi(gateway.dispatcher.broker, settings)))
    _publish_body_schema(app)
    return app


def purge_command(body: Any, tenant: str, admin: bool, tenants: Collection[str] = ()) -> CachePurge:
    """The purge a caller asked for: ``{"tag": T}`` (optional) purges the caller's own tenant; an
    admin key may name another ``tenant`` (one of ``tenants``, the configured ones), or purge every
    tenant with ``"all": true``."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object: {\"tag\": ..., \"tenant\": ..., \"all\": ...}")
    unknown = sorted(set(body) - {"tenant", "tag", "all"})
    if unknown:
        raise BadRequest(f"{unknown[0]}: unknown field; use tenant, tag or all", param=unknown[0])
    for name in ("tenant", "tag"):
        if body.get(name) is not None and (not isinstance(body[name], str) or not body[name]):
            raise BadRequest(f"{name}: must be a non-empty string", param=name)
    if "all" in body and not isinstance(body["all"], bool):
        raise BadRequest("all: must be true or false", param="all")
    target, everyone = body.get("tenant"), bool(body.get("all", False))
    if not admin and (everyone or (target is not None and target != tenant)):
        raise SkinflintError("only an admin key may purge another tenant's cache", status=403, code="forbidden",
                             param="all" if everyone else "tenant")
    if everyone and target is not None:
        raise BadRequest("all: give either all or tenant, not both", param="all")
    if body.get("tag") is not None:
        cache_control.check_tag(body["tag"], "tag")
    if target is not None and target != tenant and target not in tenants:
        raise NotFound(f"tenant: no tenant named {target[:70]!r} is configured", param="tenant")
    return CachePurge(tenant=None if everyone else (target or tenant), tag=body.get("tag"))


def _publish_body_schema(app: FastAPI) -> None:
    """The chat body is parsed by hand (to control the 400s), so its schema is added explicitly,
    as ingress takes it: closed objects, with the fields accepted though they change nothing."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            schema = published_schema(ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}"))
            components = spec.setdefault("components", {}).setdefault("schemas", {})
            components.update(schema.pop("$defs", {}))
            components["ChatRequest"] = schema
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


#: How often a waiting non-streaming request checks whether its client is still there.
DISCONNECT_POLL_S = 1.0


async def _final_unless_client_leaves(request: Request, replies: AsyncIterator[Chunk | Final]) -> Final:
    """Wait for the whole answer; if the client hangs up first, stop waiting, which cancels the
    task (the engine frees the slot instead of generating for nobody)."""

    async def until_final() -> Final:
        async for reply in replies:
            if isinstance(reply, Final):
                return reply
        raise Unavailable("the request ended without an answer")

    waiter = asyncio.ensure_future(until_final())
    try:
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=DISCONNECT_POLL_S)
            if done:
                return waiter.result()
            if await request.is_disconnected():
                log.info("client of %s went away; cancelling", request.state.request_id)
                raise SkinflintError("the client closed the connection", status=499, code="client_closed")
    finally:
        if not waiter.done():
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError, SkinflintError):
                await waiter


async def _first(replies: AsyncIterator[Chunk | Final]) -> Chunk | Final:
    try:
        return await anext(replies)
    except StopAsyncIteration as exc:  # pragma: no cover - the dispatcher always ends with Final
        raise Unavailable("the request ended without an answer") from exc


async def _sse(request_id: str, created: int, model: str, first: Chunk | Final,
               replies: AsyncIterator[Chunk | Final], include_usage: bool,
               observation: Observation) -> AsyncIterator[bytes]:
    yield fmt.sse(fmt.chunk(request_id, created, model, {"role": "assistant", "content": ""}))
    reply: Chunk | Final = first
    status = 499  # the client left before the stream ended
    try:
        while True:
            if isinstance(reply, Chunk):
                yield fmt.sse(fmt.chunk(request_id, created, model, {"content": reply.delta}))
            else:
                yield fmt.sse(fmt.chunk(request_id, created, reply.model, {}, reply.finish_reason))
                if include_usage:
                    yield fmt.sse(fmt.usage_chunk(request_id, created, reply))
                status = 200
                break
            reply = await anext(replies)
    except SkinflintError as exc:
        # Headers are gone already: report the error in the stream, as OpenAI does.
        status = exc.status
        yield fmt.sse(fmt.error_body(exc))
    finally:
        observation.finish(status)
        with contextlib.suppress(Exception):
            await replies.aclose()  # type: ignore[attr-defined]
    yield fmt.sse("[DONE]")
