"""No process outlives the one that started it (Linux; elsewhere it says so once and does nothing).

A process killed with SIGKILL (by a person, the OOM killer, a supervisor giving up) runs no
clean-up, and its children live on, adopted by init. For the worker that means vLLM's engine
processes (``VLLM::EngineCore``, ``VLLM::Worker``: gigabytes, and a core busy-polling); for
``make run``'s launcher, every service and nats-server, still holding their ports.

The tool is Linux's parent-death signal, ``prctl(PR_SET_PDEATHSIG, sig)``: the kernel sends
``sig`` to a process when the *thread* that created it ends, however it ends. Two catches shape
this module. It must be set by the child itself (and ``fork`` clears it, so every generation
sets its own); and because it follows the creating thread, it is only armed for processes
started from a main thread, which lives as long as its process (a child started from a short-
lived thread would be killed when that thread ends).

How each kind of child gets it:

* ``subprocess.Popen``: ``preexec_fn=die_with_parent_preexec(sig)`` (the launcher, for the
  services and nats-server).
* ``multiprocessing`` with ``fork``, and ``os.fork``: an ``os.register_at_fork`` hook.
* ``multiprocessing`` with ``spawn``, which is how vLLM's CPU build starts its engine core (it
  sets ``VLLM_WORKER_MULTIPROC_METHOD=spawn``; the engine core starts its workers the same
  way): the child is a fresh interpreter started with fork+exec in C, so no Python hook runs
  in it before multiprocessing's own bootstrap. What the parent does control is what the child
  unpickles: multiprocessing copies the starting process's ``_config`` into every ``Process``
  and pickles it for the child, ahead of the target. ``bind_children`` puts a token there whose
  unpickling arms the signal in the child and keeps the token in the child's own ``_config``,
  so the child's children get it too. ``_config`` is private; it has held the authkey since
  Python 3.4, and where it is missing this module says so and the children go unguarded.

vLLM 0.32 has no watch of its own on the engine core's parent: its workers watch the engine
core through a pipe (and leave ~3 s after it dies), but the engine core outlives a killed front
end (vllm-project/vllm#19849, #55510; fixes proposed in #34816, #55846).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import multiprocessing
import os
import platform
import signal
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG, _PR_GET_PDEATHSIG = 1, 2
#: The key of the token in multiprocessing's per-process config.
_CONFIG_KEY = "skinflint_lifeline"


class Unsupported(OSError):
    """This system has no parent-death signal (not Linux)."""


@functools.cache
def _prctl() -> Callable[..., int]:
    if platform.system() != "Linux":
        raise Unsupported(f"no prctl(PR_SET_PDEATHSIG) on {platform.system()}")
    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


def supported() -> bool:
    try:
        _prctl()
    except (Unsupported, OSError, AttributeError):
        return False
    return True


def parent_death_signal() -> int:
    """The signal this process gets when its parent ends (0: none)."""
    value = ctypes.c_int(0)
    if _prctl()(_PR_GET_PDEATHSIG, ctypes.byref(value), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_GET_PDEATHSIG): {os.strerror(err)}")
    return value.value


def die_with_parent(sig: int, parent: int) -> None:
    """Have the kernel send ``sig`` to this process when the thread that started it ends.

    ``parent`` is the pid of the process that started this one: if it has already ended (this
    process was adopted before it could ask), ``sig`` is sent at once. Fit for a ``preexec_fn``:
    it takes no lock and logs nothing."""
    if _prctl()(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG, {sig}): {os.strerror(err)}")
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def die_with_parent_preexec(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``sig`` when this process
    ends. None (start the child unguarded) where that cannot be had: not Linux, or called
    off the main thread (the signal would come when that thread ends)."""
    if not supported() or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()
    return functools.partial(die_with_parent, sig, parent)


# --- children started with multiprocessing or os.fork -------------------------------------------
class _Token:
    """Travels in multiprocessing's per-process config; see the module docstring."""

    def __init__(self, sig: int) -> None:
        self.sig = sig

    def __reduce__(self) -> tuple[Callable[[int, int, bool], _Token], tuple[int, int, bool]]:
        # Runs in the starting process, on the thread that starts the child.
        on_main = threading.current_thread() is threading.main_thread()
        return _inherit, (self.sig, os.getpid(), on_main)


def _inherit(sig: int, parent: int, arm: bool) -> _Token:
    """Unpickled in a spawned child, before its target is: arm the signal, bind the child's own
    children (the token passes on in its config, forks get the hook). Never raises: a child that
    cannot be guarded must still start."""
    _bind_forks(sig)
    if arm:
        try:
            _arm_if_child_of(sig, parent)
        except OSError as exc:  # pragma: no cover - only where prctl exists but refuses
            log.warning("process %d may outlive process %d: %s", os.getpid(), parent, exc)
    return _Token(sig)


def _arm_if_child_of(sig: int, parent: int) -> None:
    if os.getppid() == parent:
        die_with_parent(sig, parent)
    elif not _alive(parent):
        os.kill(os.getpid(), sig)  # its starter is gone already
    # else: started on its behalf by another process (a forkserver): whose death it would follow
    # is not the starter's, so it is left alone.


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_fork = threading.local()
_bound: dict[str, int] = {}


def _before_fork() -> None:
    _fork.parent = os.getpid()
    _fork.arm = threading.current_thread() is threading.main_thread()


def _after_fork_in_child() -> None:
    if getattr(_fork, "arm", False) and "sig" in _bound:
        with contextlib.suppress(OSError):  # as in _inherit, but no logging in a fresh fork
            die_with_parent(_bound["sig"], _fork.parent)


def _bind_forks(sig: int) -> None:
    if "sig" not in _bound:
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    _bound["sig"] = sig


def bind_children(sig: int = signal.SIGKILL, what: str = "this process") -> bool:
    """From now on, every process this one starts from its main thread with ``multiprocessing``
    (fork or spawn) or ``os.fork`` gets ``sig`` when this one ends, and so do theirs. Call it
    before the children are started. Idempotent (the last ``sig`` wins); never raises; returns
    whether the children are bound (False, with one log line, where that cannot be had)."""
    try:
        _prctl()
    except (Unsupported, OSError, AttributeError) as exc:
        log.info("processes %s starts may outlive it: %s", what, exc)
        return False
    config = getattr(multiprocessing.current_process(), "_config", None)
    if not isinstance(config, dict):
        log.warning("processes %s spawns may outlive it: multiprocessing keeps no _config here "
                    "(Python %s)", what, platform.python_version())
        return False
    _bind_forks(sig)
    config[_CONFIG_KEY] = _Token(sig)
    log.info("processes %s starts get %s when it ends", what, signal.Signals(sig).name)
    return True
