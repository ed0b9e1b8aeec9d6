"""``python -m services.cache``: run one cache stage replica."""

from services.cache.service import CacheService
from services.cache.settings import CacheSettings
from services.shared.runner import run, settings_or_exit


def main() -> None:
    settings = settings_or_exit(CacheSettings, "cache")
    run(lambda: CacheService(settings), settings, "cache")


if __name__ == "__main__":
    main()
