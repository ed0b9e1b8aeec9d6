"""`make run`: nats-server, accounting, a worker and ingress on this machine; Ctrl-C stops all.

Environment: SF_PORT (HTTP port, default 8000), SF_NATS_PORT (default 4222; a free port is used
if that one is taken), SF_VERBOSE=1 (echo every line, not only the services' own; all lines
are in var/log/ either way), and any SF_* setting of the services (see services/*/settings.py).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from services.shared.sched import cpu_list
from services.stack import ROOT, Stack, printer

BANNER = """
  skinflint is up.
    OpenAI base URL : http://127.0.0.1:{port}/v1      (API key: sk-skinflint-demo)
    Try             : curl -s http://127.0.0.1:{port}/v1/chat/completions \\
                        -H 'Authorization: Bearer sk-skinflint-demo' -H 'Content-Type: application/json' \\
                        -d '{{"model":"smollm2-135m",
                             "messages":[{{"role":"user","content":"Name the capital city of France."}}]}}'
    Demo            : make demo
    Usage table     : curl -s 'http://127.0.0.1:{port}/v1/usage?format=table' \\
                        -H 'Authorization: Bearer sk-skinflint-demo'
    Logs            : var/log/*.log      Spans: var/log/traces-*.jsonl
  Ctrl-C stops everything (services drain first).
"""


def main() -> None:
    var = ROOT / "var"
    http_port = int(os.environ.get("SF_PORT", "8000"))
    stack = Stack(var_dir=var, echo=printer(everything=os.environ.get("SF_VERBOSE") == "1"),
                  env={"SF_OTEL_EXPORTER": os.environ.get("SF_OTEL_EXPORTER", "console"),
                       "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
                       "HF_HUB_OFFLINE": "1"})
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        url = stack.start_nats(int(os.environ.get("SF_NATS_PORT", "4222")))
        print(f"==> nats-server with JetStream at {url}", flush=True)
        for name, module in (("accounting", "services.accounting"), ("worker", "services.worker")):
            stack.start_service(name, module, {"SF_OTEL_CONSOLE_PATH": str(var / "log" / f"traces-{name}.jsonl")})
        stack.start_ingress(http_port, {"SF_OTEL_CONSOLE_PATH": str(var / "log" / "traces-ingress.jsonl")})
        print("==> waiting for the worker to load the model (about a minute on CPU)", flush=True)
        stack.wait_ready(timeout_s=600)
        if stack.request_path_cpus:
            print(f"==> nats-server and the services run on CPU {cpu_list(stack.request_path_cpus)}, "
                  "off the cores vLLM computes on", flush=True)
        print(BANNER.format(port=http_port), flush=True)
        while not stop.wait(1.0):
            stack.check_alive()
    except RuntimeError as exc:
        print(f"==> {exc}", file=sys.stderr, flush=True)
        stack.stop()
        sys.exit(1)
    print("\n==> stopping: services drain in-flight requests first", flush=True)
    stack.stop()
    print("==> stopped", flush=True)


if __name__ == "__main__":
    main()
