"""Short scheduler slices for the processes on the request path (Linux 6.12 and newer).

On a CPU deployment the engine's processes share cores with skinflint's: vLLM's engine core
busy-polls its queues while a step runs and for a second after. When the answer is ready, the
worker, nats-server and ingress each have to wake up on a core that such a poller holds, and
Linux's EEVDF scheduler lets the running task finish its slice first (its default slice, 1.4 ms
on a 2-core machine with Linux 6.18). A request's path wakes a process four times (nats-server,
the worker, nats-server, ingress); each waiting up to a slice is milliseconds on a path whose own
work is about two.

Since Linux 6.12 a normal (``SCHED_OTHER``) task may ask for a shorter slice with
``sched_setattr(2)``'s ``sched_runtime`` (0.1 to 100 ms). A task with a shorter slice than the one
running preempts it on wake-up (the scheduler's ``PREEMPT_SHORT``), and runs for that long before
it is preempted in turn. It is not a priority: the task gets no bigger share of the CPU; it is
served sooner and in smaller pieces. That is what a process that wakes for a message, handles it
and sleeps again wants, and what a process computing for seconds does not. Needs no privilege.

Threads and processes inherit the slice from the thread that creates them, so a service sets it
at start-up, after anything it must not pass on to (the engine's processes) has been started.

The second half is placement. vLLM's CPU build pins its compute process to some cores (on 2 cores:
core 0) and leaves the rest for its front end and everything else. A service process that wakes on
a compute core preempts the model's forward pass, however short its own work. So the worker, once
its engine is up, keeps its own threads off the cores its engine's processes are pinned to, and the
launcher (``services.stack``) does the same for the processes it started. On a 2-core VM the effect
on latency was within the noise between runs (``bench/README.md``), and it cost the engine's
throughput nothing.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

#: ``sched_getattr`` / ``sched_setattr`` system call numbers by machine.
_SYSCALLS = {"x86_64": (315, 314), "aarch64": (275, 274)}
_NSEC_PER_US = 1000
#: The kernel's bounds on a custom slice (``__setscheduler_params``).
MIN_SLICE_US, MAX_SLICE_US = 100, 100_000
#: What the services ask for unless told otherwise (``SF_SCHED_SLICE_US``; 0 keeps the kernel's).
DEFAULT_SLICE_US = MIN_SLICE_US
_SCHED_FLAG_RESET_ON_FORK = 0x01


class _SchedAttr(ctypes.Structure):
    # ``struct sched_attr`` (include/uapi/linux/sched/types.h), version 1 (with utilization clamps).
    _fields_ = [
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
        ("sched_util_min", ctypes.c_uint32),
        ("sched_util_max", ctypes.c_uint32),
    ]


_SCHED_OTHER, _SCHED_BATCH = 0, 3


class SliceUnsupported(OSError):
    """This system cannot give a task its own slice (not Linux, an unknown machine, or a kernel
    older than 6.12)."""


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _numbers() -> tuple[int, int]:
    numbers = _SYSCALLS.get(platform.machine())
    if os.name != "posix" or platform.system() != "Linux" or numbers is None:
        raise SliceUnsupported(f"no sched_setattr on {platform.system()} {platform.machine()}")
    return numbers


def _syscall(name: str, number: int, tid: int, *args: object) -> None:
    if _libc().syscall(number, tid, *args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}({tid}): {os.strerror(err)}")


def _fair_attr(tid: int) -> _SchedAttr | None:
    """Thread ``tid``'s scheduling attributes, or None for a real-time or deadline thread."""
    attr = _SchedAttr()
    _syscall("sched_getattr", _numbers()[0], tid, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    return attr if attr.sched_policy in (_SCHED_OTHER, _SCHED_BATCH) else None


def get_slice_us(tid: int = 0) -> int | None:
    """The scheduler slice of thread ``tid`` (0: the calling thread) in µs: its own or the
    kernel's default (0 on kernels before 6.12, which do not report it); None for a real-time
    or deadline thread."""
    attr = _fair_attr(tid)
    return None if attr is None else int(attr.sched_runtime // _NSEC_PER_US)


def set_slice_us(slice_us: int, tid: int = 0) -> None:
    """Give thread ``tid`` (0: the calling thread) a scheduler slice of ``slice_us`` µs, keeping
    its policy and nice value. Threads it creates afterwards inherit the slice."""
    if not MIN_SLICE_US <= slice_us <= MAX_SLICE_US:
        raise ValueError(f"a slice must be {MIN_SLICE_US}..{MAX_SLICE_US} µs, not {slice_us}")
    attr = _fair_attr(tid)
    if attr is None:
        return  # a real-time or deadline thread: someone chose its scheduling on purpose
    attr.size = ctypes.sizeof(attr)
    attr.sched_flags &= _SCHED_FLAG_RESET_ON_FORK  # clearing it would need a privilege
    attr.sched_runtime = slice_us * _NSEC_PER_US
    attr.sched_util_min = attr.sched_util_max = 0
    _syscall("sched_setattr", _numbers()[1], tid, ctypes.byref(attr), 0)
    if get_slice_us(tid) != slice_us:
        # Before 6.12 the kernel accepts sched_runtime for a normal task and ignores it.
        raise SliceUnsupported(f"this kernel ({platform.release()}) keeps its own slices")


def slices_supported() -> bool:
    """Whether this system gives a task its own slice: tried on a thread that ends right after,
    so no other thread's slice changes."""
    result: list[bool] = []

    def probe() -> None:
        try:
            set_slice_us(MIN_SLICE_US + 1)
        except OSError:
            result.append(False)
        else:
            result.append(True)

    thread = threading.Thread(target=probe, name="slice-probe")
    thread.start()
    thread.join()
    return result == [True]


def threads_of(pid: int) -> list[int]:
    """Thread ids of process ``pid``."""
    try:
        return [int(t) for t in os.listdir(Path("/proc") / str(pid) / "task")]
    except FileNotFoundError:
        return []


def _each_thread(pid: int, change: Callable[[int], object]) -> int:
    """``change(tid)`` for every thread of ``pid``; returns how many took it (threads that ended
    meanwhile are skipped)."""
    count = 0
    for tid in threads_of(pid):
        try:
            change(tid)
        except ProcessLookupError:
            continue
        count += 1
    return count


def set_process_slice_us(slice_us: int, pid: int | None = None) -> int:
    """Give every thread of process ``pid`` (default: this one) a slice of ``slice_us`` µs.
    Returns how many threads took it; threads that ended meanwhile are skipped."""
    return _each_thread(os.getpid() if pid is None else pid, lambda tid: set_slice_us(slice_us, tid))


def apply_request_path_slice(slice_us: int, what: str, pid: int | None = None) -> bool:
    """``set_process_slice_us`` for a service's start-up: logs what happened, never raises.
    0 leaves the kernel's default. Returns whether the slice is in place."""
    if slice_us == 0:
        return False
    try:
        threads = set_process_slice_us(slice_us, pid)
    except SliceUnsupported as exc:
        log.info("%s keeps the kernel's default scheduler slice: %s", what, exc)
        return False
    except OSError as exc:
        log.warning("%s keeps the kernel's default scheduler slice: %s", what, exc)
        return False
    log.info("%s: scheduler slice %d µs on %d thread(s)", what, slice_us, threads)
    return True


# --- placement --------------------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpus_of(pid: int) -> frozenset[int]:
    return frozenset(os.sched_getaffinity(pid))


def engine_cpus(owner: int, available: frozenset[int]) -> frozenset[int]:
    """The CPUs that processes started by ``owner`` (an engine's compute workers) are pinned to:
    the union of every descendant's affinity narrower than ``available``. Descendants that only
    inherited ``owner``'s own placement, once it has one, do not count."""
    try:
        own = cpus_of(owner)
    except (ProcessLookupError, PermissionError):
        return frozenset()
    pinned: set[int] = set()
    for pid in descendants(owner):
        try:
            cpus = cpus_of(pid)
        except (ProcessLookupError, PermissionError):
            continue
        if cpus < available and not (own < available and cpus <= own):
            pinned |= cpus
    return frozenset(pinned)


def pin_process(pid: int, cpus: frozenset[int]) -> int:
    """Restrict every thread of ``pid`` to ``cpus``; threads it starts later inherit that.
    Returns how many threads were moved."""
    return _each_thread(pid, lambda tid: os.sched_setaffinity(tid, cpus))


def keep_off_engine_cpus(what: str, pids: list[int], owners: list[int],
                         available: frozenset[int] | None = None) -> frozenset[int]:
    """Pin ``pids`` to the CPUs the engines under ``owners`` leave free. Logs what it did, never
    raises; returns the CPUs they were pinned to (empty when nothing was done: no engine is
    pinned, as on a GPU, or they are pinned to every CPU there is)."""
    if not hasattr(os, "sched_setaffinity"):
        return frozenset()
    try:
        available = available if available is not None else cpus_of(0)
        engine = frozenset().union(*(engine_cpus(owner, available) for owner in owners))
        free = available - engine
        if not engine or not free:
            return frozenset()
        threads = sum(pin_process(pid, free) for pid in pids)
    except OSError as exc:
        log.warning("%s may share the engine's cores: %s", what, exc)
        return frozenset()
    log.info("%s: %d thread(s) on CPU %s, off the engine's CPU %s", what, threads, cpu_list(free),
             cpu_list(engine))
    return free


def cpu_list(cpus: frozenset[int]) -> str:
    """CPUs as people write them: ``0,1``."""
    return ",".join(str(c) for c in sorted(cpus))


def main(argv: list[str] | None = None) -> int:
    """``python -m services.shared.sched PID...``: give running processes (a nats-server started
    by hand, say) the services' slice."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m services.shared.sched", description=main.__doc__)
    parser.add_argument("pids", nargs="+", type=int, metavar="PID")
    parser.add_argument("--slice-us", type=int, default=DEFAULT_SLICE_US,
                        help=f"µs, {MIN_SLICE_US}..{MAX_SLICE_US} (default {DEFAULT_SLICE_US})")
    args = parser.parse_args(argv)
    if not MIN_SLICE_US <= args.slice_us <= MAX_SLICE_US:
        parser.error(f"--slice-us must be {MIN_SLICE_US}..{MAX_SLICE_US}")
    failed = 0
    for pid in args.pids:
        if not threads_of(pid):
            print(f"{pid}: no such process")
            failed += 1
            continue
        try:
            print(f"{pid}: {args.slice_us} µs on {set_process_slice_us(args.slice_us, pid)} thread(s)")
        except OSError as exc:
            print(f"{pid}: {exc}")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
