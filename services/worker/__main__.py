"""``python -m services.worker``: run one inference worker."""

from services.shared.runner import run, settings_or_exit
from services.worker.service import WorkerService
from services.worker.settings import WorkerSettings


def main() -> None:
    settings = settings_or_exit(WorkerSettings, "worker")
    run(lambda: WorkerService(settings), settings, "worker")


if __name__ == "__main__":  # vLLM's engine process is spawned: the guard is required
    main()
