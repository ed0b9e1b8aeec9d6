"""``python -m tests.support.lifeline_tree MODE``: a process that starts children the way MODE
says, for tests/unit/test_lifeline.py. Every process prints ``ROLE PID SIGNAL`` (SIGNAL: what
it gets when its parent ends), then sleeps until killed."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from services.shared import lifeline


def say(line: str) -> None:
    # One write per line: these processes share one pipe, and print() may write in pieces.
    os.write(1, f"{line}\n".encode())


def report(role: str) -> None:
    say(f"{role} {os.getpid()} {lifeline.parent_death_signal()}")


def start(method: str, target: Callable[..., None], *args: str) -> None:
    context: Any = multiprocessing.get_context(method)  # typeshed: a str gives BaseContext
    context.Process(target=target, args=args).start()


def leaf() -> None:
    report("leaf")
    time.sleep(120)


def branch(method: str) -> None:
    report("branch")
    start(method, leaf)
    time.sleep(120)


def main(mode: str) -> None:
    if mode != "unbound":
        lifeline.bind_children(signal.SIGKILL, "the test's middle process")
    if mode in ("spawn", "fork", "spawn-then-fork", "unbound"):
        method, leaf_method = {"fork": ("fork", "fork"), "spawn-then-fork": ("spawn", "fork")}.get(
            mode, ("spawn", "spawn"))
        start(method, branch, leaf_method)
    elif mode == "spawn-from-thread":
        starter = threading.Thread(target=start, args=("spawn", leaf))
        starter.start()
        starter.join()
        say("thread-ended")
    elif mode == "popen":
        preexec = lifeline.die_with_parent_preexec(signal.SIGTERM)
        code = "from tests.support.lifeline_tree import leaf; leaf()"
        subprocess.Popen([sys.executable, "-c", code], preexec_fn=preexec)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    report("middle")
    time.sleep(120)


if __name__ == "__main__":
    main(sys.argv[1])
