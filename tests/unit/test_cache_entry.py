"""The exact cache's stored entry: round trip, and anything else is refused with a reason."""

from __future__ import annotations

import json

import pytest

from contracts.v1 import Final, TokenUsage
from services.cache.entry import ENTRY_VERSION, MalformedEntry, decode, encode, entry_from_final
from services.shared.canonical import FORM_VERSION

pytestmark = pytest.mark.unit

FINAL = Final(request_id="r1", text="Paris.", finish_reason="stop",
              usage=TokenUsage(prompt_tokens=10, completion_tokens=3), model="smollm2-135m",
              tier="small", served_by="w1")


def test_an_entry_round_trips_with_what_a_hit_needs() -> None:
    entry = entry_from_final(FINAL, tenant="acme", created_at=1000.0, ttl_s=60, tags=("kb:v3",))
    back = decode(encode(entry))
    assert back == entry
    assert (back.v, back.form_version, back.expires_at) == (ENTRY_VERSION, FORM_VERSION, 1060.0)
    assert (back.text, back.usage.completion_tokens, back.tier, back.tags) == ("Paris.", 3, "small", ("kb:v3",))


def test_fields_a_newer_writer_added_are_ignored() -> None:
    raw = json.loads(encode(entry_from_final(FINAL, tenant="acme", created_at=1.0, ttl_s=1)))
    assert decode(json.dumps({**raw, "similarity": 0.93}).encode()).text == "Paris."


@pytest.mark.parametrize(("data", "why"), [
    (b"\xff\xfe", "not JSON"),
    (b"{not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"v": 99}', "entry version 99"),
    (b'{"v": 1, "tenant": "acme"}', "text: Field required"),
])
def test_a_malformed_value_is_refused_naming_why(data: bytes, why: str) -> None:
    with pytest.raises(MalformedEntry, match=why):
        decode(data)
