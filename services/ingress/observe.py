"""One chat request as the metrics see it, from arrival to its last byte (plain logic).

The front end (HTTP or WebSocket) opens an ``Observation`` when a request arrives, the gateway
fills in who asked and which tier answers, and the front end finishes it exactly once with the
status the client got. Streaming answers finish when their stream ends, not when headers go out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from contracts.subjects import Priority
from contracts.v1 import CacheNote
from services.shared import metrics


@dataclass
class Observation:
    stream: bool
    started: float = field(default_factory=time.perf_counter)
    tenant: str = "none"
    tier: str = "none"
    #: The public model name that answers, once known (a routed request's pick).
    model: str | None = None
    priority: str = Priority.INTERACTIVE.value
    first_token_s: float | None = None
    finished: bool = False
    #: What the cache stage did (the response's cache headers say it).
    cache: CacheNote | None = None

    def __post_init__(self) -> None:
        metrics.INFLIGHT.labels(self.priority).inc()

    def first_token(self) -> None:
        """A token reached the client (streaming); only the first counts."""
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.started
            metrics.TIME_TO_FIRST_TOKEN.labels(self.tier, self.priority).observe(self.first_token_s)

    def finish(self, status: int, overhead_s: float | None = None) -> None:
        """The client has its answer (or error) with HTTP ``status``; idempotent."""
        if self.finished:
            return
        self.finished = True
        metrics.INFLIGHT.labels(self.priority).dec()
        metrics.REQUESTS.labels(self.tenant, self.tier, self.priority, str(status)).inc()
        metrics.REQUEST_DURATION.labels(self.tier, self.priority, str(self.stream).lower()).observe(
            time.perf_counter() - self.started)
        if overhead_s is not None:
            metrics.OVERHEAD.labels(self.tier, self.priority).observe(overhead_s)
