"""Exact cache hits answered by ingress itself: one key-value read, no hop to the cache stage.

An exact hit needs no embedding and no verifier, only the entry under the request's key in the
exact store (JetStream KV, shared with the cache stage). Reading it here spares the hit the hop
to the cache stage and back: the cheapest answer skinflint gives is also its fastest, and it is
still served while no cache replica runs. Everything else stays with the stage: a miss goes on
marked ``cache_exact_checked`` (the stage does not read the key again), and tenants in shadow
mode, requests that skip the lookup and bulk work go to the stage as before.

The hit is charged like one the stage serves: a usage event at zero tokens with the cache note
(what the answer had cost), sent before the reply, and the same metrics.
"""

from __future__ import annotations

import logging
import time

from faststream.nats import NatsBroker
from nats.js.errors import BucketNotFoundError

from contracts.subjects import CACHE_STAGE, Priority
from contracts.v1 import CacheMode, CacheOutcome, Final, TaskEnvelope
from services.cache.entry import served_answer
from services.cache.exact_store import ExactStore, read_exact
from services.shared import metrics
from services.shared.usage import UsagePublisher, answered_without_model

log = logging.getLogger(__name__)

#: While the bucket does not exist yet (no cache replica has started), look again this often.
BIND_RETRY_S = 5.0


class ExactCache:
    """Reads the exact store for requests bound for the cache stage; see the module docstring."""

    def __init__(self, broker: NatsBroker, instance_id: str, usage: UsagePublisher) -> None:
        self._broker = broker
        self._usage = usage
        self.served_by = f"cache:{instance_id}"
        self._store: ExactStore | None = None
        self._next_bind = 0.0

    def applies(self, env: TaskEnvelope) -> bool:
        """Whether ingress reads the key: the cache stage is next, may serve (mode on, lookup
        allowed), and the client waits (interactive)."""
        control = env.cache_control
        return (env.itinerary[:1] == [CACHE_STAGE] and env.priority is Priority.INTERACTIVE
                and control.mode is CacheMode.ON and control.lookup)

    async def _bound(self) -> ExactStore | None:
        if self._store is None and time.monotonic() >= self._next_bind:
            self._next_bind = time.monotonic() + BIND_RETRY_S
            try:
                self._store = await ExactStore.bind(self._broker.connection.jetstream())
                log.info("exact cache hits are answered here, from bucket %s", self._store.bucket)
            except BucketNotFoundError:
                log.info("no exact cache bucket yet (no cache replica has started): exact hits go to the stage")
        return self._store

    async def answer(self, env: TaskEnvelope) -> tuple[Final | None, TaskEnvelope]:
        """The cached answer to ``env`` (its usage event already sent), or None and the envelope to
        hand on (marked ``cache_exact_checked`` when the key was read and nothing found)."""
        if not self.applies(env):
            return None, env
        store = await self._bound()
        if store is None:
            return None, env
        started = time.perf_counter()
        try:
            entry = await read_exact(store, env.tenant, env.request, env.cache_control.max_age_s)
        except Exception as exc:  # the stage reads it again, and records a failure its way
            log.warning("exact cache read failed for %s (the cache stage tries): %s", env.request_id, exc)
            return None, env
        if entry is None:
            return None, env.model_copy(update={"cache_exact_checked": True})
        final = served_answer(entry, env.request_id, served_by=self.served_by, now=time.time(),
                              kind=CacheOutcome.EXACT)
        metrics.observe_cache_lookup(CacheMode.ON.value, CacheOutcome.EXACT.value, time.perf_counter() - started,
                                     served=True)
        # Charged before it is answered, as every service that ends a task does.
        try:
            await self._usage.publish(answered_without_model(env, final, self.served_by))
        except Exception:
            log.exception("usage event of %s could not be sent", env.request_id)
        return final, env
