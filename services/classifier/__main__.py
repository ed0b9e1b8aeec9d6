"""``python -m services.classifier``: run one classifier stage replica."""

from services.classifier.service import ClassifierService
from services.classifier.settings import ClassifierSettings
from services.shared.runner import run, settings_or_exit


def main() -> None:
    settings = settings_or_exit(ClassifierSettings, "classifier")
    run(lambda: ClassifierService(settings), settings, "classifier")


if __name__ == "__main__":
    main()
