"""`make demo`: a few requests through the official OpenAI SDK, then the usage table."""

from __future__ import annotations

import os
import time

import httpx
from openai import OpenAI

BASE = os.environ.get("SF_BASE_URL", f"http://127.0.0.1:{os.environ.get('SF_PORT', '8000')}/v1")
KEY = os.environ.get("SF_API_KEY", "sk-skinflint-demo")
QUESTIONS = ["Name the capital city of France.", "Name three primary colours.", "What is 12 times 12?"]


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


def main() -> None:
    client = OpenAI(base_url=BASE, api_key=KEY)
    since = time.time()
    for question in QUESTIONS:
        started = time.perf_counter()
        reply = client.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": question}], max_tokens=48,
            temperature=0,
        )
        took = time.perf_counter() - started
        print(f"Q: {question}\nA: {reply.choices[0].message.content}\n   "
              f"({reply.usage.prompt_tokens} in, {reply.usage.completion_tokens} out, {took:.2f} s)\n")
    print("Streaming: ", end="", flush=True)
    stream = client.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "Write a haiku about saving money."}],
        max_tokens=48, stream=True, stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print("\n")
    print("The cache: the first question again, then reworded (an answer is learnt once it is whole).")
    time.sleep(0.5)
    for question in (QUESTIONS[0], "What's the capital city of France?"):
        raw = client.chat.completions.with_raw_response.create(
            model="smollm2-135m", messages=[{"role": "user", "content": question}], max_tokens=48,
            temperature=0,
        )
        reply = raw.parse()
        similarity = raw.headers.get("x-skinflint-cache-similarity")
        print(f"Q: {question}\nA: {reply.choices[0].message.content}\n   "
              f"(cache: {raw.headers.get('x-skinflint-cache', 'off')}"
              f"{f', similarity {similarity}' if similarity else ''})\n")
    sent = len(QUESTIONS) + 3
    charged = wait_for_ledger(since, sent)
    if charged < sent:
        print(f"(accounting has charged {charged} of these {sent} requests so far; is it running?)\n")
    print(get_usage(format="table").text)


if __name__ == "__main__":
    main()
