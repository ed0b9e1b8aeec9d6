"""``python -m services.worker``: run one inference worker, for the tier ``SF_TIER`` names in the
tiers file: self-hosted (vLLM in this process) or upstream (forwarding to an HTTP provider)."""

from services.shared.runner import run, settings_or_exit
from services.worker.service import WorkerService
from services.worker.settings import WorkerSettings


def main() -> None:
    settings = settings_or_exit(WorkerSettings, "worker")
    run(lambda: WorkerService(settings), settings, "worker")


if __name__ == "__main__":  # vLLM's engine process is spawned: the guard is required
    main()
