"""`make demo`: requests through the official OpenAI SDK, named models and ``model: "auto"``, then
the usage table: each request's cost against its counterfactual, and the savings by lever.

Works with whatever is running: a tier that is down answers 503 (or its fallback answers, and the
table says so), the classifier being off sends ``auto`` to the default tier; each request prints
what happened, and the table shows what accounting charged.
"""

from __future__ import annotations

import os
import time
from decimal import Decimal
from typing import Any

import httpx
from openai import APIConnectionError, APIStatusError, OpenAI

BASE = os.environ.get("SF_BASE_URL", f"http://127.0.0.1:{os.environ.get('SF_PORT', '8000')}/v1")
KEY = os.environ.get("SF_API_KEY", "sk-skinflint-demo")
SMALL, LARGE, AUTO = "smollm2-135m", "smollm2-135m-remote", "auto"
#: (model, question): named models pass straight through; "auto" lets the router pick the tier,
#: counted against the default tier (large) it would have used without routing.
REQUESTS = [
    (SMALL, "Name the capital city of France."),
    (LARGE, "Name three primary colours."),
    (AUTO, "What is 12 times 12?"),
    (AUTO, "Say hello to my friend Sam."),
    (AUTO, "Prove that the square root of 2 is irrational, then explain each step of the proof and why "
           "the argument by contradiction works."),
    (AUTO, "Write a Python function that merges overlapping intervals in a list, with its time complexity "
           "and three unit tests."),
]
LEVERS = (("cache", "cache_saved_usd"), ("routing", "routing_saved_usd"), ("fallback", "fallback_saved_usd"),
          ("prefix cache", "prefix_saved_usd"), ("bulk", "bulk_saved_usd"), ("cascade", "cascade_saved_usd"))


def get_usage(**params: str | float) -> httpx.Response:
    return httpx.get(f"{BASE}/usage", params=params, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)


def wait_for_ledger(since: float, expected: int, timeout_s: float = 15.0) -> int:
    """Wait until accounting has charged ``expected`` requests made after ``since``.

    Usage events reach the ledger asynchronously (within about a second when traffic is light):
    the answer does not wait for its charge. Returns how many were charged when the wait ended.
    """
    deadline = time.monotonic() + timeout_s
    charged = 0
    while True:
        reply = get_usage(since=since)
        if reply.status_code == 200:
            charged = sum(row["requests"] for row in reply.json()["rows"])
        if charged >= expected or time.monotonic() > deadline:
            return charged
        time.sleep(0.25)


def ask(client: OpenAI, model: str, question: str) -> bool:
    """One request; prints the answer, the tier that gave it and the tokens, or what went wrong.
    True if it was answered."""
    started = time.perf_counter()
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": question}], max_tokens=48, temperature=0)
    except APIStatusError as exc:
        print(f"Q ({model}): {question}\n   -> HTTP {exc.status_code}: {_message(exc)}\n")
        return False
    except APIConnectionError as exc:
        print(f"Q ({model}): {question}\n   -> no answer: {exc}\n")
        return False
    reply, took = raw.parse(), time.perf_counter() - started
    usage = reply.usage
    tokens = f"{usage.prompt_tokens} in, {usage.completion_tokens} out, " if usage else ""
    similarity = raw.headers.get("x-skinflint-cache-similarity")
    print(f"Q ({model}): {question}\nA: {(reply.choices[0].message.content or '').strip()}\n"
          f"   (tier {raw.headers.get('x-skinflint-tier', '?')}, {tokens}{took:.2f} s, "
          f"cache {raw.headers.get('x-skinflint-cache', 'off')}{f' {similarity}' if similarity else ''})\n")
    return True


def _message(exc: APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(exc)


def stream(client: OpenAI) -> bool:
    print(f"Streaming ({SMALL}): ", end="", flush=True)
    try:
        chunks = client.chat.completions.create(
            model=SMALL, messages=[{"role": "user", "content": "Write a haiku about saving money."}],
            max_tokens=48, stream=True, stream_options={"include_usage": True})
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
    except (APIStatusError, APIConnectionError) as exc:
        print(f"-> failed: {exc}\n")
        return False
    print("\n")
    return True


def summary(rows: list[dict[str, Any]]) -> str:
    """One line: this run's cost against its counterfactual, and each lever's share."""
    cost = sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0))
    counterfactual = sum((Decimal(r["reference_cost_usd"]) for r in rows), Decimal(0))
    if counterfactual <= 0:
        return "Nothing was charged against a counterfactual in this run."
    parts = []
    for name, key in LEVERS:
        amount = sum((Decimal(r.get(key, "0")) for r in rows), Decimal(0))
        if amount:
            parts.append(f"{name} ${amount:.6f}")
    return (f"This run: ${cost:.6f} charged against ${counterfactual:.6f} without routing or any lever "
            f"({(1 - cost / counterfactual) * 100:.1f}% saved): {', '.join(parts) or 'no lever'}.")


def main() -> None:
    client = OpenAI(base_url=BASE, api_key=KEY, max_retries=0)
    since = time.time()
    answered = sum(ask(client, model, question) for model, question in REQUESTS)
    answered += stream(client)
    print("The cache: the first question again, then reworded (an answer is learnt once it is whole).")
    time.sleep(0.5)
    answered += sum(ask(client, SMALL, q) for q in (REQUESTS[0][1], "What's the capital city of France?"))
    charged = wait_for_ledger(since, answered)
    if charged < answered:
        print(f"(accounting has charged {charged} of the {answered} requests answered so far; is it running?)\n")
    report = get_usage(since=since)
    if report.status_code != 200:
        print(f"The usage report is not available: HTTP {report.status_code} {report.text[:200]}")
        return
    print(f"Usage of this run (GET /v1/usage?format=table&since={since:.0f}):\n")
    print(get_usage(format="table", since=since).text)
    print(summary(report.json()["rows"]))


if __name__ == "__main__":
    main()
