"""``python -m tests.support.dummy_service``: stands in for a service under services.stack, for
tests of its supervision without engines. Environment:

* ``DUMMY_CHILD=1``: start a child that ignores SIGTERM and would outlive this process (as vLLM's
  engine core does when nothing binds it).
* ``DUMMY_EXIT=<code>``: exit with that code at once, after printing ``DUMMY_SAY``.

It prints ``started pid=<pid> child=<pid or 0> health=<SF_HEALTH_PORT>``, then sleeps.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def main() -> None:
    child = 0
    if os.environ.get("DUMMY_CHILD") == "1":
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
        child = subprocess.Popen([sys.executable, "-c", code]).pid
    print(f"started pid={os.getpid()} child={child} health={os.environ.get('SF_HEALTH_PORT', '')}", flush=True)
    if "DUMMY_EXIT" in os.environ:
        print(os.environ.get("DUMMY_SAY", "stopping"), flush=True)
        sys.exit(int(os.environ["DUMMY_EXIT"]))
    time.sleep(120)


if __name__ == "__main__":
    main()
