"""`make demo`: a few requests through the official OpenAI SDK, then the usage table."""

from __future__ import annotations

import os
import time

import httpx
from openai import OpenAI

BASE = os.environ.get("SF_BASE_URL", f"http://127.0.0.1:{os.environ.get('SF_PORT', '8000')}/v1")
KEY = os.environ.get("SF_API_KEY", "sk-skinflint-demo")
QUESTIONS = ["What is the capital of France?", "Name three primary colours.", "What is 12 times 12?"]


def main() -> None:
    client = OpenAI(base_url=BASE, api_key=KEY)
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
    time.sleep(1.0)  # usage events are settled asynchronously
    table = httpx.get(f"{BASE}/usage", params={"format": "table"},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    print(table.text)


if __name__ == "__main__":
    main()
