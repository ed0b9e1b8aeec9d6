"""A fake of skinflint's batch API for the CLI's tests: the OpenAI SDK on an httpx2 MockTransport
(httpx2 is the HTTP client the SDK is built on)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx2
import openai

OUTPUT = b'{"id":"batch_req_1","custom_id":"a","response":{"status_code":200,"request_id":"r1","body":{}}}\n' \
         b'{"id":"batch_req_2","custom_id":"b","response":{"status_code":200,"request_id":"r2","body":{}}}\n'
ERRORS = b'{"id":"batch_req_3","custom_id":"c","response":null,"error":{"code":"batch_expired","message":"x"}}\n'


def batch_object(batch_id: str, status: str, total: int = 0, completed: int = 0, failed: int = 0,
                 **extra: Any) -> dict[str, Any]:
    return {"id": batch_id, "object": "batch", "endpoint": "/v1/chat/completions", "model": "auto",
            "input_file_id": "file-in", "completion_window": "24h", "status": status, "created_at": 1_764_000_000,
            "expires_at": 1_764_086_400, "in_progress_at": 1_764_000_001 if status != "validating" else None,
            "request_counts": {"total": total, "completed": completed, "failed": failed},
            "usage": {"input_tokens": 30, "input_tokens_details": {"cached_tokens": 6}, "output_tokens": 9,
                      "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 39},
            "metadata": {"team": "x"}, **extra}


class FakeSkinflint:
    """The ingress's batch API as far as the CLI uses it: each retrieve moves a batch one step
    along ``steps`` (validating -> in_progress -> ... -> the final status). ``absent_polls``: how
    many retrieves answer 404 first (a bus job before the batch service has taken it)."""

    def __init__(self, final: str = "completed", usage: dict[str, Any] | None = None, batch_id: str = "batch_1",
                 absent_polls: int = 0) -> None:
        self.batch_id = batch_id
        self.absent_polls = absent_polls
        self.requests: list[httpx2.Request] = []
        self.uploads: list[bytes] = []
        self.created: list[dict[str, Any]] = []
        self.polls = 0
        self.usage = usage
        self.steps = [
            batch_object(batch_id, "validating"),
            batch_object(batch_id, "in_progress", 3, 0, 0),
            batch_object(batch_id, "in_progress", 3, 1, 0),
            batch_object(batch_id, final, 3, 2, 1, output_file_id="file-out", error_file_id="file-err"),
        ]

    def client(self, base_url: str, api_key: str) -> openai.OpenAI:
        assert base_url == "http://127.0.0.1:8000/v1" and api_key == "sk-test"
        return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0,
                             http_client=httpx2.Client(transport=httpx2.MockTransport(self.handle)))

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        path, method = request.url.path, request.method
        if method == "POST" and path == "/v1/files":
            self.uploads.append(request.read())
            return httpx2.Response(200, json={"id": "file-in", "object": "file", "bytes": 3, "created_at": 1,
                                             "filename": "in.jsonl", "purpose": "batch"})
        if method == "POST" and path == "/v1/batches":
            self.created.append(json.loads(request.read()))
            return httpx2.Response(200, json=self.steps[0])
        if method == "GET" and path == "/v1/batches":
            return httpx2.Response(200, json={"object": "list", "data": [self.steps[-1]], "has_more": False})
        if match := re.fullmatch(r"/v1/batches/([^/]+)(/cancel)?", path):
            absent = match[1] != self.batch_id or (not match[2] and self.absent_polls > 0)
            if absent:
                self.absent_polls -= match[1] == self.batch_id
                return httpx2.Response(404, json={"error": {"message": f"no batch {match[1]!r}", "type": "x",
                                                           "code": "not_found", "param": None}})
            if match[2]:
                return httpx2.Response(200, json=batch_object(self.batch_id, "cancelling", 3, 1, 0))
            self.polls += 1
            return httpx2.Response(200, json=self.steps[min(self.polls - 1, len(self.steps) - 1)])
        if path == "/v1/files/file-out/content":
            return httpx2.Response(200, content=OUTPUT)
        if path == "/v1/files/file-err/content":
            return httpx2.Response(200, content=ERRORS)
        if path == "/v1/usage" and self.usage is not None:
            return httpx2.Response(200, json=self.usage)
        return httpx2.Response(404, json={"error": {"message": f"no route {path}", "type": "x"}})
