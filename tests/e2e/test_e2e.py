"""HTTP -> NATS -> the real vLLM CPU engine -> the ledger, through the clients users use."""

from __future__ import annotations

import asyncio
import json
import os
import time
from decimal import Decimal
from pathlib import Path

import httpx
import nats
import pytest
import websockets
import yaml
from openai import BadRequestError, OpenAI

from contracts.subjects import BULK_RESULTS_STREAM, Priority, bulk_result_subject, infer_subject
from contracts.v1 import REPLY_ADAPTER, Final, TaskEnvelope
from services.accounting.ledger import Ledger, UsageRecord, make_engine
from services.shared import sched
from services.shared.sched import DEFAULT_SLICE_US
from tests.e2e.conftest import LiveSystem

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-skinflint-demo"
MODEL = "smollm2-135m"
# Greedy decoding of a 135M model follows the kernels' rounding: "What is the capital of France?"
# is answered "The capital of France is Paris." in float32 (AVX2 hosts) but "L'Étoile, la
# Marseillaise, ..." in bfloat16 on AMX. This wording gets the same answer on both paths.
QUESTION = [{"role": "user", "content": "Name the capital city of France."}]


def client(live: LiveSystem) -> OpenAI:
    return OpenAI(base_url=f"{live.base_url}/v1", api_key=KEY, max_retries=0, timeout=120)


async def ledger_row(live: LiveSystem, request_id: str, timeout_s: float = 20) -> UsageRecord:
    engine = make_engine(live.database_url)
    try:
        ledger = Ledger(engine)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            row = await ledger.get(request_id)
            if row is not None:
                return row
            await asyncio.sleep(0.2)
    finally:
        await engine.dispose()
    raise AssertionError(f"no ledger row for {request_id} after {timeout_s} s")


def expected_nanos(tier: str, prompt: int, cached: int, completion: int, bulk: bool = False) -> int:
    """The price book applied by hand: $ per million tokens -> nano-dollars per token is x1000."""
    book = yaml.safe_load((ROOT / "infra/config/pricebook.yaml").read_text())["tiers"][tier]
    total = ((prompt - cached) * Decimal(book["input_per_mtok"]) + cached * Decimal(book["cached_input_per_mtok"])
             + completion * Decimal(book["output_per_mtok"])) * 1000
    if bulk:
        total *= Decimal(book.get("batch_discount", "1"))
    return int(total.to_integral_value())


def test_openai_sdk_gets_a_real_answer(live: LiveSystem) -> None:
    reply = client(live).chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)  # type: ignore[arg-type]
    completion = reply.parse()
    assert "Paris" in (completion.choices[0].message.content or "")
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert reply.headers["x-request-id"] == completion.id.removeprefix("chatcmpl-")


def test_openai_sdk_streams_with_usage(live: LiveSystem) -> None:
    # The question was answered before (the test above): no-cache asks the model, not the cache.
    stream = client(live).chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=24, temperature=0, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}, extra_headers={"Cache-Control": "no-cache"})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0 and not chunks[-1].choices


async def test_websocket_client_gets_chunks_and_the_answer(live: LiveSystem) -> None:
    url = live.base_url.replace("http://", "ws://") + "/v1/ws"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        await ws.send(json.dumps({"id": "q1", "request": {"model": MODEL, "messages": QUESTION,
                                                          "max_tokens": 24, "temperature": 0}}))
        await ws.send(json.dumps({"id": "bad", "request": {"model": MODEL, "messages": []}}))
        deltas, done, errors = [], None, []
        while done is None:
            frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=120))
            if frame["type"] == "chunk":
                deltas.append(frame["delta"])
            elif frame["type"] == "error":
                errors.append(frame)
            else:
                done = frame
    assert done["id"] == "q1"
    assert "".join(deltas) == done["response"]["choices"][0]["message"]["content"]
    assert "Paris" in "".join(deltas)
    assert errors[0]["id"] == "bad" and errors[0]["error"]["param"] == "request.messages"


async def test_ledger_row_matches_the_engine_and_the_price_book(live: LiveSystem) -> None:
    async with httpx.AsyncClient(base_url=live.base_url, timeout=120,
                                 headers={"Authorization": f"Bearer {KEY}"}) as http:
        r = await http.post("/v1/chat/completions", json={
            "model": MODEL, "messages": QUESTION, "max_tokens": 16, "temperature": 0})
    assert r.status_code == 200
    usage = r.json()["usage"]
    row = await ledger_row(live, r.headers["x-request-id"])
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert (row.tenant, row.tier, row.status, row.priority) == ("demo", "small", "ok", "interactive")
    assert (row.prompt_tokens, row.cached_prompt_tokens, row.completion_tokens) == (
        usage["prompt_tokens"], cached, usage["completion_tokens"])
    assert row.cost_nanousd == expected_nanos("small", row.prompt_tokens, cached, row.completion_tokens)
    # A named model: its counterfactual is its own tier, uncached; only the prefix cache saved.
    assert (row.counterfactual_tier, row.routing_saved_nanousd) == ("small", 0)
    assert row.reference_nanousd == expected_nanos("small", row.prompt_tokens, 0, row.completion_tokens)
    assert row.reference_nanousd - row.cost_nanousd == row.prefix_saved_nanousd


def test_the_prefix_cache_shows_in_usage(live: LiveSystem) -> None:
    # The CPU prefix cache works in 128-token blocks: a long shared system prompt is needed.
    system = "You are a terse assistant for a travel company. " * 40
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Say hi."}]
    sdk = client(live)
    first = sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)  # type: ignore[arg-type]
    second = sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)  # type: ignore[arg-type]
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens > 256
    details = second.usage.prompt_tokens_details
    assert details is not None and (details.cached_tokens or 0) >= 128


def test_context_overflow_is_a_clear_400(live: LiveSystem) -> None:
    with pytest.raises(BadRequestError) as info:
        client(live).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "word " * 3000}], max_tokens=8)
    body = info.value.body
    assert isinstance(body, dict) and body["param"] == "messages" and body["code"] == "context_length_exceeded"


def test_usage_table_for_the_callers_tenant(live: LiveSystem) -> None:
    client(live).chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)  # type: ignore[arg-type]
    time.sleep(1.0)
    r = httpx.get(f"{live.base_url}/v1/usage", params={"format": "table"}, timeout=30,
                  headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    totals, levers = r.text.split("\n\n")[:2]
    assert totals.splitlines()[0].split()[:3] == ["tenant", "tier", "requests"]
    # Never another tenant's rows, in the totals or in the savings by lever (title, header, rule first).
    assert all(line.split()[0] == "demo" for line in totals.splitlines()[2:] + levers.splitlines()[3:])


async def test_a_bulk_task_is_answered_by_the_real_engine_and_charged_at_the_batch_price(
    live: LiveSystem,
) -> None:
    raw = json.loads((ROOT / "tests/examples/v1/task_envelope.json").read_text())
    raw.update(request_id=f"bulk-e2e-{time.time_ns()}", priority="bulk", job_id="e2e",
               reply_subject=bulk_result_subject("e2e"), tenant="demo", marks=[])
    raw["request"].update(stream=False, max_tokens=8, temperature=0)
    task = TaskEnvelope.model_validate(raw)
    nc = await nats.connect(live.nats_url)
    try:
        js = nc.jetstream()
        await js.publish(infer_subject("small", Priority.BULK), task.model_dump_json().encode(),
                         headers={"Nats-Msg-Id": task.request_id})
        sub = await js.pull_subscribe(bulk_result_subject("e2e"), stream=BULK_RESULTS_STREAM.name)
        msgs = await sub.fetch(1, timeout=120)
        result = REPLY_ADAPTER.validate_json(msgs[0].data)
        await msgs[0].ack()
    finally:
        await nc.close()
    assert isinstance(result, Final) and result.request_id == task.request_id and result.text
    row = await ledger_row(live, task.request_id)
    assert row.priority == "bulk"
    assert row.cost_nanousd == expected_nanos("small", row.prompt_tokens, row.cached_prompt_tokens,
                                              row.completion_tokens, bulk=True)


def test_the_request_path_asks_for_short_slices_and_the_engine_keeps_the_kernels(live: LiveSystem) -> None:
    if not sched.slices_supported():
        pytest.skip("this system gives no task its own slice (Linux < 6.12, or refused)")
    kernel_default = sched.get_slice_us()  # this test process never asks for one
    for name in ("nats", "ingress", "worker", "accounting", "cache"):
        pid = live.stack.procs[name].process.pid
        assert {sched.get_slice_us(t) for t in sched.threads_of(pid)} == {DEFAULT_SLICE_US}, name
    engine = _engine_processes(live)
    assert len(engine) >= 1
    for pid in engine:
        assert {sched.get_slice_us(t) for t in sched.threads_of(pid)} == {kernel_default}


def _engine_processes(live: LiveSystem) -> list[int]:
    return [pid for pid in sched.descendants(live.stack.procs["worker"].process.pid)
            if Path(f"/proc/{pid}/comm").read_text().startswith("VLLM::")]


def test_the_request_path_keeps_off_the_cores_the_engine_computes_on(live: LiveSystem) -> None:
    available = frozenset(os.sched_getaffinity(0))
    placement = {pid: sched.cpus_of(pid) for pid in _engine_processes(live)}
    engine_cpus = frozenset().union(*(cpus for cpus in placement.values() if cpus < available))
    if not engine_cpus or engine_cpus == available:
        pytest.skip("vLLM pinned no CPUs of its own here (it does so on CPU machines with 2 cores or more)")
    for name in ("nats", "ingress", "worker", "accounting", "cache"):
        pid = live.stack.procs[name].process.pid
        assert {sched.cpus_of(t) for t in sched.threads_of(pid)} == {available - engine_cpus}, name
    # The engine's other processes (its core loop) were not moved: they float as in `vllm serve`.
    assert available in placement.values()


async def test_a_repeated_question_is_served_from_the_cache_and_the_ledger_counts_the_saving(
    live: LiveSystem,
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Name three primary colours."}],
            "max_tokens": 256, "temperature": 0}
    async with httpx.AsyncClient(base_url=live.base_url, timeout=120,
                                 headers={"Authorization": f"Bearer {KEY}"}) as http:
        first = await http.post("/v1/chat/completions", json=body)
        assert first.status_code == 200 and first.headers["x-skinflint-cache"] == "miss", first.text
        assert first.json()["choices"][0]["finish_reason"] == "stop"
        for _ in range(50):  # the answer is learnt after the reply
            again = await http.post("/v1/chat/completions", json=body)
            if again.headers["x-skinflint-cache"] == "exact":
                break
            await asyncio.sleep(0.2)
    assert again.headers["x-skinflint-cache"] == "exact"
    assert again.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    made = first.json()["usage"]
    row = await ledger_row(live, again.headers["x-request-id"])
    assert (row.cache_outcome, row.prompt_tokens, row.completion_tokens, row.cost_nanousd) == ("exact", 0, 0, 0)
    assert row.cache_source_tier == "small"
    assert row.cache_saved_nanousd == expected_nanos("small", made["prompt_tokens"], 0, made["completion_tokens"])
    assert row.reference_nanousd == row.cache_saved_nanousd  # the counterfactual, small: the cache saved it all
