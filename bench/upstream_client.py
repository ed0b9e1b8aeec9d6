"""Which HTTP client the upstream worker uses: httpx against aiohttp, CPU per request.

A zero-latency OpenAI-compatible mock runs in a process of its own (one JSON body, or 64 SSE
chunks and a usage chunk); each client sends requests to it, one at a time and then 16 at once,
and the figure is this process's CPU time (user + system) per request: what the client library
costs the worker, since the worker's core is the scarce thing on a 2-core machine.

    .venv/bin/python bench/upstream_client.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BODY = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 64}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


MOCK = """
import asyncio, json, sys, uvloop
from aiohttp import web
chunk = lambda text: ("data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "model": "m",
    "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}) + "\\n\\n").encode()
STREAM = b"".join(chunk(" tok") for _ in range(64)) + ("data: " + json.dumps({"id": "c", "choices": [],
    "usage": {"prompt_tokens": 9, "completion_tokens": 64, "total_tokens": 73}}) + "\\n\\ndata: [DONE]\\n\\n").encode()
BODY = json.dumps({"id": "c", "object": "chat.completion", "model": "m", "choices": [{"index": 0,
    "message": {"role": "assistant", "content": "tok " * 64}, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 64, "total_tokens": 73}}).encode()
async def chat(request):
    body = await request.json()
    if body.get("stream"):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(0, len(STREAM), 4096):  # as a server flushes: several events per write
            await resp.write(STREAM[i:i + 4096])
        await resp.write_eof()
        return resp
    return web.Response(body=BODY, content_type="application/json")
app = web.Application()
app.router.add_post("/v1/chat/completions", chat)
uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


Client = tuple[Callable[[], Awaitable[int]], Callable[[], Awaitable[None]]]


async def _httpx_client(base: str, stream: bool) -> Client:
    import httpx

    client = httpx.AsyncClient(base_url=base, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
                               timeout=httpx.Timeout(60, connect=5))
    payload = json.dumps({**BODY, "stream": stream}).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer x"}

    async def one() -> int:
        if not stream:
            r = await client.post("/chat/completions", content=payload, headers=headers)
            return len(json.loads(r.content)["choices"])
        n = 0
        async with client.stream("POST", "/chat/completions", content=payload, headers=headers) as r:
            async for part in r.aiter_bytes():
                n += part.count(b"\n\n")
        return n

    return one, client.aclose


async def _aiohttp_client(base: str, stream: bool) -> Client:
    import aiohttp

    session = aiohttp.ClientSession(base_url=base + "/", connector=aiohttp.TCPConnector(limit=64),
                                    timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=60))
    payload = json.dumps({**BODY, "stream": stream}).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer x"}

    async def one() -> int:
        async with session.post("chat/completions", data=payload, headers=headers) as r:
            if not stream:
                return len(json.loads(await r.read())["choices"])
            n = 0
            while part := await r.content.readany():
                n += part.count(b"\n\n")
            return n

    return one, session.close


async def _measure(make: Callable[[str, bool], Awaitable[Client]],
                   base: str, stream: bool, requests: int, concurrency: int) -> tuple[float, float]:
    """(CPU µs per request, requests/s)."""
    one, close = await make(base, stream)
    for _ in range(50):
        await one()
    left = requests

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await close()
    return cpu / requests * 1e6, requests / wall


async def _run(base: str, requests: int) -> None:
    print(f"{'client':8} {'mode':10} {'conc':>4} {'CPU µs/req':>11} {'req/s':>8}")
    for stream in (False, True):
        n = requests if not stream else requests // 4
        for concurrency in (1, 16):
            for name, make in (("httpx", _httpx_client), ("aiohttp", _aiohttp_client)):
                cpu, rate = await _measure(make, base, stream, n, concurrency)
                mode = "stream64" if stream else "json"
                print(f"{name:8} {mode:10} {concurrency:>4} {cpu:>11.0f} {rate:>8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    port = _free_port()
    mock = subprocess.Popen([sys.executable, "-c", MOCK, str(port)], cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        import uvloop

        uvloop.install()
        asyncio.run(_run(f"http://127.0.0.1:{port}/v1", args.requests))
    finally:
        os.killpg(mock.pid, signal.SIGTERM)
        mock.wait()


if __name__ == "__main__":
    main()
