"""``python -m services.batch``: run one batch service replica."""

from services.batch.service import BatchService
from services.batch.settings import BatchSettings
from services.shared.runner import run, settings_or_exit


def main() -> None:
    settings = settings_or_exit(BatchSettings, "batch")
    run(lambda: BatchService(settings), settings, "batch")


if __name__ == "__main__":
    main()
