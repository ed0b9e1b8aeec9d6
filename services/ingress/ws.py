"""The WebSocket chat endpoint: many requests multiplexed on one socket, answers streamed.

Protocol (JSON text frames; documented in the README):
  client -> {"id": "c1", "request": {<chat completion body>}}      start a request
             (optionally "cache": {"lookup", "store", "max_age_s", "ttl_s", "tags"}: as the HTTP headers)
  client -> {"type": "cancel", "id": "c1"}                          stop one
  server -> {"type": "chunk", "id": "c1", "delta": "..."}           text as it is generated
  server -> {"type": "done", "id": "c1", "response": {<chat.completion>}, "cache": {"outcome", ...}}
  server -> {"type": "error", "id": "c1", "error": {"message", "type", "param", "code", "status"}}
Authentication: the ``Authorization: Bearer`` header, or ``?api_key=`` for browser clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from contracts.v1 import CacheControl, ChatRequest, Chunk
from services.ingress import cache_control
from services.ingress import openai_format as fmt
from services.ingress.gateway import Gateway, new_request_id, parse_chat_request
from services.ingress.observe import Observation
from services.ingress.tenants import Caller
from services.shared.errors import BadRequest, RateLimited, SkinflintError

log = logging.getLogger(__name__)


def _error(cid: Any, err: SkinflintError) -> dict[str, Any]:
    body = fmt.error_body(err)["error"]
    body["status"] = err.status
    return {"type": "error", "id": cid, "error": body}


def websocket_chat(gateway: Gateway) -> Callable[[WebSocket], Awaitable[None]]:
    async def endpoint(ws: WebSocket) -> None:
        auth = ws.headers.get("authorization")
        if auth is None and ws.query_params.get("api_key"):
            auth = f"Bearer {ws.query_params['api_key']}"
        try:
            caller = gateway.gate.authenticate(auth)
        except SkinflintError as exc:
            await ws.close(code=4401, reason=exc.message[:120])
            return
        await ws.accept()
        send_lock = asyncio.Lock()
        tasks: dict[Any, asyncio.Task[None]] = {}

        async def send(message: dict[str, Any]) -> None:
            async with send_lock:
                await ws.send_text(json.dumps(message, separators=(",", ":")))

        try:
            while True:
                raw = await ws.receive_text()
                await _handle_frame(gateway, caller, raw, tasks, send)
        except WebSocketDisconnect:
            pass
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    return endpoint


async def _handle_frame(gateway: Gateway, caller: Caller, raw: str, tasks: dict[Any, asyncio.Task[None]],
                        send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    try:
        frame = json.loads(raw)
    except json.JSONDecodeError as exc:
        await send(_error(None, BadRequest(f"the frame is not valid JSON: {exc}")))
        return
    if not isinstance(frame, dict):
        await send(_error(None, BadRequest("a frame must be a JSON object")))
        return
    cid = frame.get("id")
    if not isinstance(cid, (str, int)) or isinstance(cid, bool):
        await send(_error(cid, BadRequest("every frame needs an 'id' (string or integer)", param="id")))
        return
    kind = frame.get("type", "chat")
    if kind == "cancel":
        task = tasks.get(cid)
        if task is not None:
            task.cancel()
        return
    if kind != "chat":
        await send(_error(cid, BadRequest(f"unknown frame type {kind!r}; use 'chat' or 'cancel'", param="type")))
        return
    if cid in tasks:
        await send(_error(cid, BadRequest(f"a request with id {cid!r} is already running", param="id")))
        return
    if len(tasks) >= gateway.settings.max_ws_inflight:
        await send(_error(cid, RateLimited(
            f"at most {gateway.settings.max_ws_inflight} requests may run on one socket")))
        return
    body = frame.get("request")
    try:
        req = parse_chat_request(body)
    except SkinflintError as exc:
        if exc.param:
            exc.param = f"request.{exc.param}"
        await send(_error(cid, exc))
        return
    try:
        control = cache_control.from_frame(frame.get("cache"), caller.cache)
    except SkinflintError as exc:
        await send(_error(cid, exc))
        return
    task = asyncio.create_task(_run(gateway, caller, cid, req, control, send))
    tasks[cid] = task
    task.add_done_callback(lambda _: tasks.pop(cid, None))


async def _run(gateway: Gateway, caller: Caller, cid: Any, req: ChatRequest, control: CacheControl,
               send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    request_id = new_request_id()
    req = req.model_copy(update={"stream": True})
    observation = Observation(stream=True)
    try:
        async for reply in gateway.answer(caller, req, request_id, observation=observation, cache_control=control):
            if isinstance(reply, Chunk):
                await send({"type": "chunk", "id": cid, "delta": reply.delta})
            else:
                done: dict[str, Any] = {"type": "done", "id": cid, "request_id": request_id,
                                        "response": fmt.completion(request_id, fmt.now(), reply)}
                if reply.cache is not None:
                    done["cache"] = reply.cache.model_dump(include={"outcome", "similarity", "shadow"})
                await send(done)
        observation.finish(200)
    except SkinflintError as exc:
        observation.finish(exc.status)
        with contextlib.suppress(Exception):
            await send(_error(cid, exc))
    except asyncio.CancelledError:
        observation.finish(499)  # cancelled by the client, or the socket closed
        raise
    except Exception:
        observation.finish(500)
        log.exception("websocket request %s failed", request_id)
        with contextlib.suppress(Exception):
            await send(_error(cid, SkinflintError(f"internal error; logged with request id {request_id}")))
