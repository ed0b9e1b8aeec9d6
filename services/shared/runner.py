"""One way to run any service: logging, signals, start, graceful drain on SIGTERM, stop."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, Protocol, TypeVar

from services.shared import sched
from services.shared.health import health_server
from services.shared.settings import ConfigError, ServiceSettings, load_settings

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

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Whether the service can take work now (its connections are up, its model is loaded),
        and details for ``/readyz``. Only asked between ``start`` and ``drain``."""
        ...


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
                sched_slice_us: int = 0, keep_off_engine_cpus: bool = False,
                health: tuple[str, int] | None = None, exit_when_stuck: bool = False) -> None:
    """Run ``service`` until SIGTERM/SIGINT (or ``stop``), then drain and close it.

    ``health`` (host, port): serve /healthz, /readyz and /metrics there from before the service
    starts until it is closed (ingress serves them on its own HTTP port and passes None).
    ``exit_when_stuck`` (a service's own process): once asked to stop, the process ends after
    the drain and close timeouts and a grace whatever still hangs (``exit_deadline``).
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    phase = "starting"

    def readiness() -> tuple[bool, dict[str, Any]]:
        if phase != "serving":
            return False, {"state": phase}
        ready, details = service.ready()
        return ready, {"state": phase, **details}

    server = None
    try:
        if health is not None:
            server = health_server(service.name, health[0], health[1], readiness)
            await server.start()
            log.info("%s: /healthz, /readyz and /metrics on http://%s:%d", service.name, health[0], server.port)
        await service.start()
        freeze_startup_heap()
        # After start: the engine's processes, which a worker has started by now, keep the
        # kernel's slice and their own cores; the service's threads keep off those cores.
        sched.apply_request_path_slice(sched_slice_us, service.name)
        if keep_off_engine_cpus:
            sched.keep_off_engine_cpus(service.name, [os.getpid()], owners=[os.getpid()])
        phase = "serving"
        log.info("%s is ready", service.name)
        await stop.wait()
        phase = "draining"
        # A second signal while draining means "now", unless it is an echo of the first: a
        # launcher that dies sends its children a burst of SIGTERMs milliseconds apart.
        first_signal_at = time.monotonic()

        def again(sig: int) -> None:
            if time.monotonic() - first_signal_at < REPEAT_SIGNAL_IGNORED_S:
                return
            for each in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(each)
            signal.raise_signal(sig)  # the default action now: the process ends

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, again, sig)
        # Whatever hangs from here on (a client library waiting on a bus that is gone), the
        # process ends: a supervisor, a test or an operator waiting for it is never left hanging.
        if exit_when_stuck:
            exit_deadline(service.name, drain_timeout_s + CLOSE_TIMEOUT_S + EXIT_GRACE_S)
        log.info("%s is draining (up to %.0f s)", service.name, drain_timeout_s)
        await _within(service.drain(), drain_timeout_s, f"{service.name}: draining")
    finally:
        phase = "stopping"
        try:
            await _within(service.close(), CLOSE_TIMEOUT_S, f"{service.name}: closing its connections")
        finally:
            if server is not None:
                await server.close()
        log.info("%s stopped", service.name)


async def _within(step: Coroutine[Any, Any, None], timeout_s: float, what: str) -> None:
    """Run one step of a stop; past ``timeout_s`` it is abandoned, with a line saying so."""
    try:
        await asyncio.wait_for(step, timeout=timeout_s)
    except TimeoutError:
        log.warning("%s took over %.0f s; stopping anyway", what, timeout_s)


#: A stop signal this soon after the first is the same request again, not "stop now".
REPEAT_SIGNAL_IGNORED_S = 1.0
#: How long ``Service.close`` may take (connections, stores) before the service stops anyway.
CLOSE_TIMEOUT_S = 10.0
#: After the drain and close timeouts, the time left for the interpreter's own shutdown.
EXIT_GRACE_S = 5.0


def exit_deadline(service_name: str, seconds: float) -> threading.Timer:
    """End the process ``seconds`` from now if it is still running, with a line that says so and
    every thread's stack (where it hung) on stderr: the last resort of a stop that was asked for."""
    def expire() -> None:
        stamp = time.strftime("%H:%M:%S")
        with contextlib.suppress(OSError, ValueError):
            print(f"{stamp} ERROR [{service_name}] did not stop within {seconds:g} s of being asked to; "
                  "exiting now", file=sys.stderr, flush=True)
            faulthandler.dump_traceback(all_threads=True)
        os._exit(EXIT_STUCK)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


def freeze_startup_heap() -> None:
    """Move everything alive after start-up (modules, the model's tokenizer, the app) out of the
    collector's reach, as ``vllm serve`` does. Otherwise each full collection walks that whole
    heap, which in the worker (vLLM, torch, transformers) is millions of objects, on the event loop."""
    gc.collect()
    gc.freeze()


#: The exit code of a service stopped by a configuration mistake (sysexits' EX_CONFIG): a
#: supervisor must not restart it, since it would only fail the same way again.
EX_CONFIG = 78
#: The exit code of a service that did not stop in time after SIGTERM (``exit_deadline``).
EXIT_STUCK = 70

S = TypeVar("S", bound=ServiceSettings)


def config_error_exit(service_name: str, exc: ConfigError) -> NoReturn:
    """Say what is wrong in one line (in the services' log format, logging may not be set up
    yet) and stop with ``EX_CONFIG``."""
    stamp = time.strftime("%H:%M:%S")
    print(f"{stamp} ERROR [{service_name}] configuration error: {exc}", file=sys.stderr, flush=True)
    sys.exit(EX_CONFIG)


def settings_or_exit(settings_class: type[S], service_name: str) -> S:
    """The service's settings from the environment, or a one-line error and ``EX_CONFIG``."""
    try:
        return load_settings(settings_class)
    except ConfigError as exc:
        config_error_exit(service_name, exc)


def run(build: Callable[[], Service], settings: ServiceSettings, service_name: str,
        health: bool = True) -> None:
    """Entry point for ``python -m services.<name>``. A ``ConfigError`` while building the
    service (its whole configuration is checked there) stops it with ``EX_CONFIG``. ``health``:
    serve /healthz, /readyz and /metrics on ``settings.health_port`` (ingress has its own)."""
    configure_logging(service_name, settings.log_level)
    try:
        service = build()
    except ConfigError as exc:
        config_error_exit(service_name, exc)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency, this is belt and braces
        pass
    asyncio.run(serve(service, settings.drain_timeout_s, sched_slice_us=settings.sched_slice_us,
                      keep_off_engine_cpus=settings.sched_keep_off_engine_cpus,
                      health=(settings.health_host, settings.health_port) if health else None,
                      exit_when_stuck=True))
