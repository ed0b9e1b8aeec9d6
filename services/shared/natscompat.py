"""A fix for nats-py, applied by every service before it connects.

nats-py 2.15 and 2.16 (``PullSubscription.fetch`` → ``_fetch_n``) raise a bare
``asyncio.TimeoutError`` instead of ``nats.errors.TimeoutError`` when the fetch deadline runs out
between its no-wait probe and its lingering request: on a saturated host, for example while vLLM
loads, a process can miss the whole fetch window. FastStream's pull loop suppresses only nats-py's
own timeout, so the bare one escapes, and FastStream logs it at ERROR and restarts the consumer
task: a false alarm on every busy start-up. Upstream: nats-io/nats.py PR #1008 (open as of
nats-py 2.16.0).

The fix re-raises that timeout as ``nats.errors.TimeoutError``, which subclasses
``asyncio.TimeoutError``: every caller that caught either still catches it. Once nats-py raises its
own type, the wrapper passes it through untouched.
"""

from __future__ import annotations

import functools
from typing import Any

import nats.errors
from nats.js.client import JetStreamContext

_MARK = "_skinflint_timeout_fix"


def apply() -> None:
    """Wrap ``PullSubscription.fetch`` once per process (idempotent)."""
    cls = JetStreamContext.PullSubscription
    original = cls.fetch
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    async def fetch(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await original(self, *args, **kwargs)
        except nats.errors.TimeoutError:
            raise
        except TimeoutError as exc:
            raise nats.errors.TimeoutError from exc

    setattr(fetch, _MARK, True)
    cls.fetch = fetch  # type: ignore[method-assign]
