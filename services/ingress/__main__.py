"""``python -m services.ingress``: run the OpenAI-compatible front door."""

from services.ingress.service import IngressService
from services.ingress.settings import IngressSettings
from services.shared.runner import run, settings_or_exit


def main() -> None:
    settings = settings_or_exit(IngressSettings, "ingress")
    # Health and metrics are on ingress's own HTTP port.
    run(lambda: IngressService(settings), settings, "ingress", health=False)


if __name__ == "__main__":
    main()
