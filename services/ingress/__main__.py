"""``python -m services.ingress``: run the OpenAI-compatible front door."""

from services.ingress.service import IngressService
from services.ingress.settings import IngressSettings
from services.shared.runner import run


def main() -> None:
    settings = IngressSettings()
    run(lambda: IngressService(settings), settings, "ingress")


if __name__ == "__main__":
    main()
