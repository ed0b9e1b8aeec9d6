"""One way to run any service: logging, signals, start, graceful drain on SIGTERM, stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Protocol

from services.shared import sched
from services.shared.settings import ServiceSettings

log = logging.getLogger("skinflint")


class Service(Protocol):
    """A long-running service.

    ``start`` returns once the service takes work. ``drain`` stops taking new work and returns
    when the work already taken is finished (the runner bounds how long it may take). ``close``
    releases resources; it is called even when start or drain failed.
    """

    name: str

    async def start(self) -> None: ...

    async def drain(self) -> None: ...

    async def close(self) -> None: ...


def configure_logging(service_name: str, level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)-5s [{service_name}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    # Per-message logs from the framework drown the service's own lines at INFO.
    for noisy in ("faststream", "faststream.access", "faststream.access.nats", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


async def serve(service: Service, drain_timeout_s: float, stop: asyncio.Event | None = None,
                sched_slice_us: int = 0, keep_off_engine_cpus: bool = False) -> None:
    """Run ``service`` until SIGTERM/SIGINT (or ``stop``), then drain and close it."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await service.start()
        freeze_startup_heap()
        # After start: the engine's processes, which a worker has started by now, keep the
        # kernel's slice and their own cores; the service's threads keep off those cores.
        sched.apply_request_path_slice(sched_slice_us, service.name)
        if keep_off_engine_cpus:
            sched.keep_off_engine_cpus(service.name, [os.getpid()], owners=[os.getpid()])
        log.info("%s is ready", service.name)
        await stop.wait()
        # A second signal while draining means "now": restore the default handlers.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log.info("%s is draining (up to %.0f s)", service.name, drain_timeout_s)
        try:
            await asyncio.wait_for(service.drain(), timeout=drain_timeout_s)
        except TimeoutError:
            log.warning("%s: drain timed out after %.0f s; stopping anyway", service.name,
                        drain_timeout_s)
    finally:
        await service.close()
        log.info("%s stopped", service.name)


def freeze_startup_heap() -> None:
    """Move everything alive after start-up (modules, the model's tokenizer, the app) out of the
    collector's reach, as ``vllm serve`` does. Otherwise each full collection walks that whole
    heap, which in the worker (vLLM, torch, transformers) is millions of objects, on the event loop."""
    gc.collect()
    gc.freeze()


def run(build: Callable[[], Service], settings: ServiceSettings, service_name: str) -> None:
    """Entry point for ``python -m services.<name>``."""
    configure_logging(service_name, settings.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency, this is belt and braces
        pass
    asyncio.run(serve(build(), settings.drain_timeout_s, sched_slice_us=settings.sched_slice_us,
                      keep_off_engine_cpus=settings.sched_keep_off_engine_cpus))
