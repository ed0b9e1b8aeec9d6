"""The usage events on the JetStream usage stream, as tests read them back."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import nats

from contracts.subjects import USAGE_STREAM, USAGE_SUBJECT


async def usage_stream(nats_url: str) -> list[dict[str, Any]]:
    """Every usage event the stream holds, oldest first (an ephemeral consumer: nothing is acked
    for accounting)."""
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe(USAGE_SUBJECT, stream=USAGE_STREAM.name)
        events: list[dict[str, Any]] = []
        while True:
            try:
                msgs = await sub.fetch(200, timeout=1.0)
            except nats.errors.TimeoutError:
                return events
            events.extend(json.loads(msg.data) for msg in msgs)
    finally:
        await nc.close()


async def stored_usage(nats_url: str) -> dict[str, int]:
    """Request id -> how many copies the usage stream holds."""
    return dict(Counter(event["request_id"] for event in await usage_stream(nats_url)))


async def usage_events(nats_url: str) -> dict[str, dict[str, Any]]:
    """Request id -> its (last) usage event."""
    return {event["request_id"]: event for event in await usage_stream(nats_url)}
