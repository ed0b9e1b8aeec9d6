"""The exact cache's store on a real nats-server's JetStream KV: per-entry TTL, max age,
invalidation by tenant and by tag, tenant isolation, and unreadable values as misses."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from contracts.v1 import Final, TokenUsage
from services.cache.entry import ExactEntry, encode, entry_from_final
from services.cache.exact_store import ExactStore, token
from tests.support.natsd import NatsServer

pytestmark = pytest.mark.integration

K1, K2, K3 = "1" * 64, "2" * 64, "3" * 64
FINAL = Final(request_id="r1", text="Paris.", finish_reason="stop",
              usage=TokenUsage(prompt_tokens=10, completion_tokens=3), model="smollm2-135m",
              tier="small", served_by="w1")


def entry(tenant: str, *, text: str = "Paris.", tags: tuple[str, ...] = (), age_s: float = 0.0,
          ttl_s: float = 300.0) -> ExactEntry:
    return entry_from_final(FINAL.model_copy(update={"text": text}), tenant=tenant,
                            created_at=time.time() - age_s, ttl_s=ttl_s, tags=tags)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture
async def store(nc: Client) -> AsyncIterator[ExactStore]:
    # A bucket of the test's own: the session's server is shared.
    bucket = f"T_{uuid.uuid4().hex[:12]}"
    js = nc.jetstream()
    yield await ExactStore.open(js, max_age_s=3600, bucket=bucket)
    await js.delete_key_value(bucket)


async def put(store: ExactStore, tenant: str, key: str, text: str = "Paris.", tags: tuple[str, ...] = (),
              ttl_s: float = 300.0) -> None:
    await store.put(tenant, key, entry(tenant, text=text, tags=tags, ttl_s=ttl_s), ttl_s=ttl_s)


async def test_an_entry_round_trips(store: ExactStore) -> None:
    stored = entry("acme", tags=("kb:v3",))
    await store.put("acme", K1, stored, ttl_s=300)
    assert await store.get("acme", K1) == stored
    assert await store.get("acme", K2) is None


async def test_an_entry_is_replaced_by_a_newer_answer(store: ExactStore) -> None:
    await put(store, "acme", K1, text="old")
    await put(store, "acme", K1, text="new")
    got = await store.get("acme", K1)
    assert got is not None and got.text == "new"


async def test_the_server_removes_an_entry_when_its_ttl_runs_out(nc: Client, store: ExactStore) -> None:
    await put(store, "acme", K1, ttl_s=1)
    await put(store, "acme", K2, ttl_s=300)
    assert await store.get("acme", K1) is not None
    kv = await nc.jetstream().key_value(store._bucket)
    deadline = time.monotonic() + 15
    while True:  # the server's expiry runs on a timer: poll, bounded
        try:
            await kv.get(f"e.acme.{K1}")
        except KeyNotFoundError:
            break
        assert time.monotonic() < deadline, "the 1 s entry was still stored after 15 s"
        await asyncio.sleep(0.2)
    assert await store.get("acme", K1) is None
    assert await store.get("acme", K2) is not None


async def test_an_entry_past_its_ttl_is_never_served_even_before_the_server_removes_it(nc: Client) -> None:
    now = [time.time()]
    bucket = f"T_{uuid.uuid4().hex[:12]}"
    js = nc.jetstream()
    store = await ExactStore.open(js, max_age_s=3600, bucket=bucket, clock=lambda: now[0])
    try:
        await store.put("acme", K1, entry("acme", ttl_s=60), ttl_s=60)
        assert await store.get("acme", K1) is not None
        now[0] += 61
        assert await store.get("acme", K1) is None
    finally:
        await js.delete_key_value(bucket)


async def test_a_requests_max_age_is_honoured(store: ExactStore) -> None:
    await store.put("acme", K1, entry("acme", age_s=100), ttl_s=300)
    assert await store.get("acme", K1, max_age_s=50) is None
    assert await store.get("acme", K1, max_age_s=200) is not None
    assert await store.get("acme", K1) is not None


async def test_invalidating_a_tenant_leaves_every_other_tenant(store: ExactStore) -> None:
    # "acme.eu" would fall under an unescaped "acme.>" filter.
    for tenant in ("acme", "acme.eu", "other"):
        await put(store, tenant, K1, tags=("kb:v3",))
        await put(store, tenant, K2)
    await store.invalidate_tenant("acme")
    assert await store.get("acme", K1) is None and await store.get("acme", K2) is None
    for tenant in ("acme.eu", "other"):
        assert await store.get(tenant, K1) is not None and await store.get(tenant, K2) is not None
    # acme's tag markers went with it; the others' stay.
    assert await store.invalidate_tag("kb:v3") == 2


async def test_invalidating_a_tag_leaves_other_tags_and_untagged_entries(store: ExactStore) -> None:
    await put(store, "acme", K1, tags=("kb:v3",))
    await put(store, "acme", K2, tags=("kb:v4",))
    await put(store, "other", K1, tags=("kb:v3", "faq"))
    await put(store, "other", K3)
    assert await store.invalidate_tag("kb:v3") == 2
    assert await store.get("acme", K1) is None and await store.get("other", K1) is None
    assert await store.get("acme", K2) is not None and await store.get("other", K3) is not None
    assert await store.invalidate_tag("kb:v3") == 0
    assert await store.invalidate_tag("faq") == 1  # a stale marker: its entry is already gone


async def test_one_tenant_never_reads_anothers_entry(nc: Client, store: ExactStore) -> None:
    await put(store, "acme", K1, text="acme's answer")
    assert await store.get("other", K1) is None
    # Escaping is injective: "a.b" and the literal "a=2Eb" are different namespaces.
    await put(store, "a.b", K2)
    assert token("a.b") != token("a=2Eb")
    assert await store.get("a=2Eb", K2) is None
    with pytest.raises(ValueError, match="belongs to tenant 'acme'"):
        await store.put("other", K3, entry("acme"), ttl_s=60)
    # A value naming another tenant (written by hand) is not served either.
    kv = await nc.jetstream().key_value(store._bucket)
    await kv.put(f"e.other.{K3}", encode(entry("acme")))
    assert await store.get("other", K3) is None


@pytest.mark.parametrize("value", [b"{not json", b'{"v": 1, "tenant": "acme"}', b'{"v": 7}', b"[]", b""])
async def test_a_malformed_stored_value_is_a_miss_and_is_logged(
    nc: Client, store: ExactStore, value: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    kv = await nc.jetstream().key_value(store._bucket)
    await kv.put(f"e.acme.{K1}", value)
    with caplog.at_level(logging.WARNING, logger="services.cache.exact_store"):
        assert await store.get("acme", K1) is None
    assert f"e.acme.{K1}" in caplog.text


async def test_purge_all_removes_every_tenants_entries(store: ExactStore) -> None:
    await put(store, "acme", K1, tags=("kb:v3",))
    await put(store, "other", K2)
    await store.purge_all()
    assert await store.get("acme", K1) is None and await store.get("other", K2) is None
    assert await store.invalidate_tag("kb:v3") == 0


async def test_opening_is_idempotent_and_brings_the_max_age_up_to_date(nc: Client) -> None:
    bucket = f"T_{uuid.uuid4().hex[:12]}"
    js = nc.jetstream()
    try:
        first = await ExactStore.open(js, max_age_s=3600, bucket=bucket)
        await put(first, "acme", K1)
        again = await ExactStore.open(js, max_age_s=600, bucket=bucket)
        info = await js.stream_info(f"KV_{bucket}")
        assert (info.config.max_age, info.config.allow_msg_ttl) == (600, True)
        assert await again.get("acme", K1) is not None
        await ExactStore.open(js, max_age_s=600, bucket=bucket)
    finally:
        await js.delete_key_value(bucket)


async def test_keys_and_names_that_do_not_fit_are_refused_naming_them(store: ExactStore) -> None:
    with pytest.raises(ValueError, match=r"cache key 'a\.b'"):
        await store.get("acme", "a.b")
    with pytest.raises(ValueError, match="tenant must not be empty"):
        await store.get("", K1)
